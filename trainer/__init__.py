"""Audio-visual emotion recognition: a hybrid TCN + cross-modal attention trainer.

    python -m trainer --help
"""

__version__ = "0.2.0"
