"""loyalty: a self-hosted loyalty, points and membership-benefits service."""

__version__ = "0.1.0"
