"""txfanout: a scatter-gather HTTP gateway on Twisted."""

__version__ = "0.1.0"
