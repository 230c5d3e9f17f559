"""Fine-tune a pretrained timm image classifier: `accelerate launch scripts/finetune.py --help`."""

from hf_finetune.cli import main

if __name__ == "__main__":
    main()
