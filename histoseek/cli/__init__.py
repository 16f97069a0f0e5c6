"""The `histoseek` command line: thin Click commands over the library, one module each.

Heavy imports (torch, onnxruntime, annoy) happen inside the commands so that `--help` is instant.
"""

from __future__ import annotations

import sys

import click

from histoseek import __version__
from histoseek.cli.cache import cache
from histoseek.cli.evaluate import evaluate
from histoseek.cli.export import export
from histoseek.cli.index import index
from histoseek.cli.info import info
from histoseek.cli.prepare import prepare
from histoseek.cli.query import query
from histoseek.cli.serve import serve
from histoseek.cli.synth import synth
from histoseek.cli.train import train
from histoseek.errors import HistoseekError


class _Group(click.Group):
    """A group whose every error is one clear line on stderr and a non-zero exit.

    HistoseekError from a command and Click's own usage errors alike: Click would otherwise
    print the usage text and a hint around a usage error.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HistoseekError as error:
            raise click.ClickException(str(error)) from None

    def main(self, *args, **kwargs):
        kwargs.pop("standalone_mode", None)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as error:
            click.echo(error.format_message())  # a bare `histoseek` shows its help
            sys.exit(0)
        except click.ClickException as error:
            click.echo(f"Error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="histoseek")
def cli() -> None:
    """Content-based retrieval of histopathology image patches (CGD embeddings + Annoy)."""


for _command in (synth, prepare, train, evaluate, info, cache, index, query, serve, export):
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    cli()
