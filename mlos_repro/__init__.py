"""mlos-repro: build MLOS Linux reproducibly and verify its supply chain offline."""

__version__ = "0.1.0"
