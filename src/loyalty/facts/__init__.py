"""What is known of each member, below the domains that read it: the member_facts table and
its settings (models), and the one FROM clause and loader the rule language reads facts with
(repository). The pure Facts value and the rule language live in loyalty.rules."""
