"""medqlora: QLoRA fine-tuning of medical language models as a chain of Papermill notebooks."""
__version__ = "0.1.0"
