"""difftune: fine-tune diffusers DDPM pipelines and sample them with guidance."""

__version__ = "0.1.0"
