"""vaerepro: reproduce Kingma & Welling (2013), Auto-Encoding Variational Bayes, Figure 2."""

__version__ = "0.1.0"
