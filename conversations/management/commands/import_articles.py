"""Import help-centre files (.md, .txt, .html) from a file or a folder into a site.

Exit status: 0 when every file was imported (added, updated or unchanged), 1 when
any file was rejected (the others are still imported), 2 when nothing could be
imported at all (unknown site key, missing path, too many files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from conversations.knowledge.importer import MAX_FILES, TooManyFiles, import_path
from conversations.models import Site


class Command(BaseCommand):
    help = (
        "Import articles from a .md, .txt or .html file, or from a folder of them "
        f"(recursively, at most {MAX_FILES:,} files). Files are matched to existing "
        "articles by their url, else by their path within the folder."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="A file, or a folder to import recursively.")
        parser.add_argument("--site-key", required=True, help="The site's public key (site_...).")
        parser.add_argument(
            "--unpublished",
            action="store_true",
            help="Import the articles unpublished: stored, but never used in answers.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        site = Site.objects.filter(public_key=options["site_key"]).first()
        if site is None:
            raise CommandError(f"No site has the key {options['site_key']!r}.", returncode=2)
        path = Path(options["path"])
        if not path.exists():
            raise CommandError(f"{path} does not exist.", returncode=2)
        try:
            report = import_path(site, path, published=not options["unpublished"])
        except TooManyFiles as exc:
            raise CommandError(str(exc), returncode=2) from exc

        for outcome in ("added", "updated", "unchanged"):
            for name in getattr(report, outcome):
                self.stdout.write(f"{outcome:<10} {name}")
        for rejected in report.rejected:
            self.stdout.write(f"{'rejected':<10} {rejected.name}: {rejected.reason}")
        self.stdout.write(report.summary())
        if report.rejected:
            count = len(report.rejected)
            raise CommandError(
                f"{count} file{'s were' if count != 1 else ' was'} rejected.", returncode=1
            )
