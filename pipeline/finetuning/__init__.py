"""Fine-tuning the best cached dense head together with the top of its backbone."""
