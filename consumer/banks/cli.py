"""``modstream bank add|remove|list``: manage exemplar banks from image files.

``add`` hashes each image (PDQ, on the pixels the consumer would classify) and asks the served
model (Triton, from the usual MODSTREAM_TRITON__* settings) for its embedding, so entries
match what the consumer computes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from consumer.banks.store import (
    ALL_TENANTS,
    Bank,
    BankEntry,
    BankError,
    BankFile,
    BankModel,
    pdq_hash,
)
from consumer.errors import ImageRejected
from consumer.runtime.settings import Settings


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bank = commands.add_parser("bank", help="manage exemplar banks of known-bad images")
    actions = bank.add_subparsers(required=True, metavar="ACTION")

    add = actions.add_parser("add", help="add image files to a bank (created if missing)")
    add.add_argument("bank", type=Path, help="the bank's folder, e.g. banks/kids-known-bad")
    add.add_argument("images", nargs="+", type=Path)
    add.add_argument("--label", required=True, help="what the images are, e.g. csam-report-123")
    add.add_argument("--tenant", help=f"owner of a new bank; {ALL_TENANTS!r} for every tenant")
    add.add_argument("--action", choices=["block", "review"], default="block")
    add.set_defaults(handler=_add)

    remove = actions.add_parser("remove", help="remove entries by id")
    remove.add_argument("bank", type=Path)
    remove.add_argument("entry_ids", nargs="+")
    remove.set_defaults(handler=_remove)

    listing = actions.add_parser("list", help="print a bank's entries")
    listing.add_argument("bank", type=Path)
    listing.set_defaults(handler=_list)


def _add(args: argparse.Namespace) -> int:
    return asyncio.run(_add_async(args))


async def _add_async(args: argparse.Namespace) -> int:
    # Imported here: the gRPC client is slow to import and only `add` needs it.
    from consumer.imaging.decode import ImageLimits, decode_image
    from consumer.inference.triton import TritonClassifier

    settings = Settings()
    classifier = TritonClassifier(settings.triton)
    try:
        spec = await classifier.connect(1)
        if (args.bank / "bank.json").is_file():
            bank = Bank.load(args.bank)
            model = bank.meta.model
            if not model.matches(spec.name, spec.version, spec.backbone_sha256):
                raise BankError(
                    f"bank {bank.meta.bank_id} holds embeddings of {model.name} version "
                    f"{model.version} (backbone {(model.backbone_sha256 or '?')[:12]}), Triton "
                    f"serves {spec.name} version {spec.version} (backbone "
                    f"{(spec.backbone_sha256 or '?')[:12]}); build a new bank for the new model"
                )
        else:
            if args.tenant is None:
                raise BankError(f"{args.bank} is a new bank: say whose it is with --tenant")
            bank = Bank.empty(
                BankFile(
                    bank_id=args.bank.name,
                    tenant=args.tenant,
                    action=args.action,
                    model=BankModel(
                        name=spec.name,
                        version=spec.version,
                        embedding_dim=spec.embedding_dim,
                        backbone_sha256=spec.backbone_sha256,
                    ),
                )
            )
        limits = ImageLimits.from_settings(settings.imaging)
        items: list[tuple[BankEntry, bytes, npt.NDArray[np.float32]]] = []
        for path in args.images:
            try:
                image = decode_image(path.read_bytes(), spec.input_size, limits)
            except (OSError, ImageRejected) as exc:
                raise BankError(f"cannot add {path}: {exc}") from exc
            pdq, quality = pdq_hash(image.pixels)
            result = await classifier.classify(image.pixels[None])
            entry = BankEntry(
                entry_id=path.stem,
                label=args.label,
                added_at=datetime.now(UTC).isoformat(),
                source=path.name,
                pdq_quality=quality,
            )
            items.append((entry, pdq, result.embeddings[0]))
        bank.add_many(items)
        for entry, _, _ in items:
            sys.stdout.write(f"added {entry.entry_id} (PDQ quality {entry.pdq_quality})\n")
    finally:
        await classifier.close()
    bank.save(args.bank)
    sys.stdout.write(f"bank {bank.meta.bank_id}: {len(bank)} entries\n")
    return 0


def _remove(args: argparse.Namespace) -> int:
    bank = Bank.load(args.bank)
    for entry_id in args.entry_ids:
        bank.remove(entry_id)
    bank.save(args.bank)
    sys.stdout.write(f"bank {bank.meta.bank_id}: {len(bank)} entries\n")
    return 0


def _list(args: argparse.Namespace) -> int:
    bank = Bank.load(args.bank)
    meta = bank.meta
    sys.stdout.write(
        f"bank {meta.bank_id}  tenant {meta.tenant}  action {meta.action}  model "
        f"{meta.model.name} v{meta.model.version}  {len(bank)} entries\n"
    )
    for entry, pdq in zip(bank.entries, bank.pdq, strict=True):
        sys.stdout.write(
            f"{entry.entry_id}\t{entry.label}\t{pdq.tobytes().hex()}\t{entry.added_at}\n"
        )
    return 0
