"""Console entry points. Each registers our methods explicitly, so none needs the hook."""

from __future__ import annotations

import sys

import click


def merge_yaml(argv: list[str] | None = None) -> None:
    """``mergekit-yaml`` with all its flags, after registering our methods."""
    import mergekit_cabs  # noqa: F401 - registers the methods
    from mergekit.scripts.run_yaml import main

    main(args=argv if argv is not None else sys.argv[1:], prog_name="mergekit-cabs-yaml")


@click.group()
def main() -> None:
    """mergekit-cabs: CABS and its baselines as MergeKit merge methods."""


@main.command(
    "merge",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                      "help_option_names": []},
)
@click.pass_context
def merge_command(ctx: click.Context) -> None:
    """Run mergekit-yaml (same arguments and flags; --help shows them)."""
    merge_yaml(list(ctx.args))


@main.command("demo")
@click.option("--out", "out_dir", default="demo-output", show_default=True,
              help="Folder for the tiny models, the config and the merged model.")
def demo_command(out_dir: str) -> None:
    """Build tiny models locally and merge them with plain mergekit-yaml and CABS."""
    from mergekit_cabs.demo import run_demo

    run_demo(out_dir)
