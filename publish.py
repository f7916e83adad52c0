"""Publish (or re-publish) a finished run to the Hugging Face Hub: the adapter with a model card of its results, and
optionally a Space with the chat page (app.py) serving it.

    python publish.py --output-dir outputs/medical-llama-3.2-3b --repo-id your-name/medical-llama-3.2-3b-lora
    python publish.py --output-dir outputs/medical-llama-3.2-3b --dry-run     # build and list the folder only
    python publish.py --output-dir outputs/medical-llama-3.2-3b --repo-id your-name/medical-llama-3.2-3b-lora \\
        --space your-name/medical-reasoning-chat                            # the adapter, then its chat Space

HF_TOKEN (write access) comes from .env or the environment and is never printed.
"""
import argparse
from pathlib import Path


def main(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output-dir", type=Path, required=True, help="the OUTPUT_DIR of a training run")
    p.add_argument("--repo-id", default="", help="namespace/name on the Hub (default: HF_REPO_ID from .env)")
    p.add_argument("--public", action="store_true", help="create the repo (and Space) public (default: private)")
    p.add_argument("--dry-run", action="store_true", help="build and list the upload folder(s), upload nothing")
    p.add_argument("--space", default="", metavar="NAMESPACE/NAME",
                   help="also build and push a Gradio Space serving the adapter (folder: OUTPUT_DIR/space_upload)")
    args = p.parse_args(argv)
    from medreason.config import tracking
    from medreason.publish import hub, space
    tracking.load_secrets()
    plan = hub.check_push("dry-run" if args.dry_run else True, args.repo_id, not args.public,
                                 args.output_dir.name)
    space_plan = space.check_space(args.space, plan) if args.space else None
    if not hub.publish(args.output_dir, plan):
        return 4
    return 0 if space_plan is None or space.publish_space(args.output_dir, space_plan) else 4


if __name__ == "__main__":
    from medreason.config.errors import run_cli
    run_cli(main)
