"""Console entry points. Each registers our methods explicitly, so none needs the hook."""

from __future__ import annotations

import sys
from pathlib import Path

import click


def merge_yaml(argv: list[str] | None = None) -> None:
    """``mergekit-yaml`` with all its flags, after registering our methods."""
    from mergekit.scripts.run_yaml import main

    from mergekit_cabs import register_all

    register_all()

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
    from mergekit_cabs.output_dir import OutputDirError

    try:
        run_demo(out_dir)
    except OutputDirError as error:
        raise click.ClickException(str(error)) from None


@main.command("inspect")
@click.argument("config_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", default="inspect-report", show_default=True,
              help="Folder for report.json and the PNG figures.")
@click.option("--random-seed", type=int, default=None,
              help="The merge's --random-seed (makes the DARE variants' masks the merge's).")
@click.option("--device", default="cpu", show_default=True, help="Where to compute the masks.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def inspect_command(config_path: str, out_dir: str, random_seed: int | None, device: str,
                    quiet: bool) -> None:
    """Mask overlap, balance and kept energy of a mergekit-yaml config, vs magnitude masks."""
    from mergekit_cabs.diagnostics import format_table, inspect_config, write_figures

    try:
        report = inspect_config(config_path, out_dir, random_seed=random_seed, device=device,
                                progress=not quiet)
    except ValueError as error:  # a config inspect cannot take; the message names the fix
        raise click.ClickException(str(error)) from None
    click.echo(format_table(report))
    figures = write_figures(report, out_dir)
    click.echo(f"\nreport: {Path(out_dir) / 'report.json'}")
    if figures is None:
        click.echo("figures skipped: matplotlib is not installed "
                   "(pip install 'mergekit-cabs[plots]')")
    else:
        click.echo("figures: " + ", ".join(str(f) for f in figures))
