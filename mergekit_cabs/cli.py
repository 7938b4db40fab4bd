"""Console entry points. Each registers our methods explicitly, so none needs the hook.

A wrong input is one line, ``Error: ...``, with exit status 2; ``--debug`` shows the
traceback (``cli_errors``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click

from mergekit_cabs.cli_errors import check_config_file, reported

DEBUG_HELP = "Show the traceback of an input error (normally one line)."


def config_argument(command: click.Command, args: list[str]) -> Optional[str]:
    """The config file among ``mergekit-yaml``'s arguments, as click will parse them (none for
    ``--help`` or a usage error, which click reports itself)."""
    context = command.make_context(command.name, list(args), resilient_parsing=True)
    return context.params.get("config_file")


def merge_yaml(argv: list[str] | None = None) -> None:
    """``mergekit-yaml`` with all its flags, after registering our methods; a wrong input
    (ours or MergeKit's) is one line with exit status 2, ``--debug`` shows its traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    with reported(debug):
        from mergekit_cabs import register_all
        from mergekit_cabs.hosts.mergekit_commands import mergekit_yaml

        main = mergekit_yaml()
        register_all()
        config_file = config_argument(main, args)
    with reported(debug, config_file):
        if config_file is not None:
            check_config_file(config_file)
        main(args=args, prog_name="mergekit-cabs-yaml")


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
    """Run mergekit-yaml (same arguments and flags; --help shows them; --debug: tracebacks)."""
    merge_yaml(list(ctx.args))


@main.command("demo")
@click.option("--out", "out_dir", default="demo-output", show_default=True,
              help="Folder for the tiny models, the config and the merged model.")
@click.option("--debug", is_flag=True, help=DEBUG_HELP)
def demo_command(out_dir: str, debug: bool) -> None:
    """Build tiny models locally and merge them with plain mergekit-yaml and CABS."""
    from mergekit_cabs.demo import run_demo

    with reported(debug):
        run_demo(out_dir)


@main.command("inspect")
@click.argument("config_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", default="inspect-report", show_default=True,
              help="Folder for report.json and the PNG figures.")
@click.option("--random-seed", type=int, default=None,
              help="The merge's --random-seed (makes the DARE variants' masks the merge's).")
@click.option("--device", default="cpu", show_default=True, help="Where to compute the masks.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--debug", is_flag=True, help=DEBUG_HELP)
def inspect_command(config_path: str, out_dir: str, random_seed: int | None, device: str,
                    quiet: bool, debug: bool) -> None:
    """Mask overlap, balance and kept energy of a mergekit-yaml config, vs magnitude masks."""
    from mergekit_cabs.diagnostics import format_table, inspect_config, write_figures

    with reported(debug, config_path):
        report = inspect_config(config_path, out_dir, random_seed=random_seed, device=device,
                                progress=not quiet)
    click.echo(format_table(report))
    figures = write_figures(report, out_dir)
    click.echo(f"\nreport: {Path(out_dir) / 'report.json'}")
    if figures is None:
        click.echo("figures skipped: matplotlib is not installed "
                   "(pip install 'mergekit-cabs[plots]')")
    else:
        click.echo("figures: " + ", ".join(str(f) for f in figures))


# Search options whose None is a setting of its own, not "use the default".
NULLABLE = ("alpha", "beta", "sigma", "population", "patience", "dtype", "random_seed")


def search_settings(options: dict):
    """``SearchSettings`` of the CLI's options; with ``--paper``, the paper's settings for every
    option not given on the command line."""
    from click.core import ParameterSource

    from mergekit_cabs.search import PAPER_SEARCH, SearchSettings

    paper = options.pop("paper")
    context = click.get_current_context()
    given = {k for k in options if context.get_parameter_source(k) is not ParameterSource.DEFAULT}
    values = {k: v for k, v in options.items() if v is not None or k in NULLABLE}
    if paper:
        values.update({k: v for k, v in PAPER_SEARCH.items() if k not in given})
    return SearchSettings(**values)


def search_loss(loss: str, paper: bool) -> str:
    """``--loss`` as given, else the paper's (``nll``) with ``--paper``."""
    source = click.get_current_context().get_parameter_source("loss")
    return "nll" if paper and source is click.core.ParameterSource.DEFAULT else loss


@main.command("search")
@click.argument("config_path", type=click.Path(dir_okay=False))
@click.option("--data", "data", multiple=True, required=True,
              help="A task's calibration texts: JSON lines, each {\"text\": ...} (loss on every token) "
                   "or {\"prompt\": ..., \"completion\": ...} (loss on the completion). Repeat per task.")
@click.option("--out", "out_dir", default="search-output", show_default=True,
              help="Folder for merge.yml, search.json and search.png.")
@click.option("--evaluations", type=int, default=100, show_default=True, help="Evaluations, the start included.")
@click.option("--bounds", type=(float, float), default=None,
              help="LO HI of every weight [default: 0.0625 16; the CABS+ paper's: 0.1 2].")
@click.option("--fitness", default=None,
              help="absolute (default): the change of the summed loss; cabs-plus: the paper's relative "
                   "changes, a rise weighed 100 times a fall.")
@click.option("--alpha", type=float, default=None, help="Fitness factor of a loss increase [default: the fitness's].")
@click.option("--beta", type=float, default=None, help="Fitness factor of a loss decrease [default: the fitness's].")
@click.option("--shared-stage/--no-shared-stage", default=True, show_default=True,
              help="First try one factor 2^k for every weight (about 7 evaluations).")
@click.option("--log-scale/--linear-scale", default=True, show_default=True,
              help="CMA-ES on log2 of the weights (a step multiplies a weight), or on the weights.")
@click.option("--paper", is_flag=True,
              help="The CABS+ paper's search: --fitness cabs-plus --no-shared-stage --linear-scale --bounds 0.1 2 "
                   "--loss nll (options given too override these).")
@click.option("--seed", type=int, default=0, show_default=True, help="CMA-ES seed.")
@click.option("--sigma", type=float, default=None,
              help="CMA-ES step size [default: 0.5 on the log scale, else (HI - LO) / 4].")
@click.option("--population", type=int, default=None, help="CMA-ES population [default: 4 + 3 ln d].")
@click.option("--loss", default="error", show_default=True,
              help="A task's loss: error (1 - mean token probability per text, bounded) or nll (mean cross-entropy).")
@click.option("--max-length", type=int, default=512, show_default=True, help="Tokens per text (truncated).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Texts per forward pass.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--dtype", default=None, help="Forward-pass dtype [default: the merge's output dtype].")
@click.option("--random-seed", type=int, default=None,
              help="The merge's --random-seed (required by the DARE variants).")
@click.option("--layer-groups", is_flag=True, help="One weight per layer group (embeddings, attention, MLP).")
@click.option("--patience", type=int, default=None, help="Stop after this many generations without improvement.")
@click.option("--min-improvement", type=float, default=1e-4, show_default=True,
              help="What --patience counts as an improvement of the best fitness.")
@click.option("--first-stage-evaluations", type=int, default=0, show_default=True,
              help="Evaluations of a cheap first stage on a subset of the texts.")
@click.option("--first-stage-fraction", type=float, default=0.25, show_default=True,
              help="Share of each task's texts in the first stage.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--debug", is_flag=True, help=DEBUG_HELP)
def search_command(config_path: str, data: tuple, out_dir: str, quiet: bool, max_length: int,
                   batch_size: int, first_stage_fraction: float, loss: str, debug: bool, **options) -> None:
    """Find the per-model weights of a config by CMA-ES (CABS+ adaptive weight allocation)."""
    from mergekit_cabs.search import search_causal_lm

    with reported(debug, config_path):
        loss = search_loss(loss, options["paper"])
        settings = search_settings(options)
        result = search_causal_lm(config_path, list(data), out_dir, settings,
                                  max_length=max_length, batch_size=batch_size, loss=loss,
                                  first_stage_fraction=first_stage_fraction, progress=not quiet)
    click.echo(f"best fitness {result.best.fitness:.6g} at evaluation {result.best.index} "
               f"({len(result.evaluations)} evaluations, {result.stopped})")
    click.echo(f"weights: {result.weights_record(result.best.weights)}")
    pressed = result.best_at_bounds()
    if pressed:
        names = ", ".join(f"{h['model']}{'/' + h['group'] if h['group'] else ''} at the {h['bound']} bound "
                          f"{h['weight']:.3g}" for h in pressed)
        lo, hi = settings.bounds
        click.echo(f"note: {names}; the best weights may lie beyond --bounds {lo:g} {hi:g}: widen them "
                   "and search again.")
    merge = f"mergekit-yaml {Path(out_dir) / 'merge.yml'} MERGED"
    if options["random_seed"] is not None:
        merge += f" --random-seed {options['random_seed']}"
    click.echo(f"wrote {Path(out_dir) / 'merge.yml'} and search.json; merge with: {merge}")
