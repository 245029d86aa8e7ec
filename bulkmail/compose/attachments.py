"""Every check on a campaign's attachments, and their encoded MIME parts, in one place.

A fixed file is checked, read and encoded once per run (`Attachments.load`), so every mail
splices in the same bytes. A per-recipient path (``files/{{ id }}.pdf``) is rendered by the
Renderer, then `locate` confines it to the folder its template names and checks the file
is there, and `part` reads it when the mail is built. Every error says which attachment
entry of the campaign file, and for a per-recipient file which CSV row.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from email.message import MIMEPart
from email.policy import EmailPolicy
from pathlib import Path

from bulkmail.errors import AttachmentError, Location, display_path
from bulkmail.models import Attachment, AttachmentSpec, Campaign

# Content types that may not be sent base64-encoded (RFC 2046 5.2.1): sent as plain files.
_COMPOSITE = ("message/", "multipart/")

Part = tuple[bytes, Attachment]  # an encoded MIME part and what it is, for reports


def attachment_part(path: Path, filename: str, policy: EmailPolicy) -> Part:
    """Read one file and serialise it as a MIME attachment part with its real content type.

    The email package encodes it (base64; a non-ASCII name per RFC 2231); the bytes are
    spliced into every mail that carries the file. OSError if it can't be read.
    """
    content_type = mimetypes.guess_type(filename)[0] or mimetypes.guess_type(path.name)[0]
    if content_type is None or content_type.startswith(_COMPOSITE):
        content_type = "application/octet-stream"
    maintype, subtype = content_type.split("/", 1)
    data = path.read_bytes()
    part = MIMEPart(policy=policy)
    part.set_content(
        data, maintype=maintype, subtype=subtype, disposition="attachment", filename=filename
    )
    del part["MIME-Version"]
    info = Attachment(filename=filename, content_type=content_type, size=len(data))
    return part.as_bytes(policy=policy), info


@dataclass(frozen=True)
class Attachments:
    """A campaign's attachments: the fixed files read and encoded, by index in
    ``campaign.attachments``; the per-recipient ones are checked and read per mail."""

    campaign: Campaign
    shared: dict[int, Part]
    policy: EmailPolicy

    @classmethod
    def load(cls, campaign: Campaign, policy: EmailPolicy) -> Attachments:
        """Check, read and encode every file that is the same for every mail."""
        shared = {}
        for index, spec in enumerate(campaign.attachments):
            if spec.templated:
                continue
            path = Path(spec.path)
            if not path.is_file():
                what = "no such file" if not path.exists() else "is not a file"
                raise AttachmentError(f"{spec.written or spec.path}: {what}", where=spec.where)
            try:
                shared[index] = attachment_part(path, spec.filename or path.name, policy)
            except OSError as exc:
                raise AttachmentError(f"{path}: {exc.strerror}", where=spec.where) from None
        return cls(campaign, shared, policy)

    @property
    def every_mail(self) -> tuple[Attachment, ...]:
        """The attachments every mail carries (for the check's report)."""
        return tuple(info for _, info in self.shared.values())

    def part(self, path: Path, filename: str, row: Location) -> Part:
        """An attachment for one row: a file it chose, or a shared file it names.
        (Read again: rare, and the name is inside the encoded part's headers.)"""
        try:
            return attachment_part(path, filename, self.policy)
        except OSError as exc:
            raise AttachmentError(f"{path}: {exc.strerror}", where=row) from None


def locate(
    campaign: Campaign, index: int, rendered: str, row: Location, made_of: tuple[str, ...]
) -> Path:
    """The file a per-recipient path rendered to, which must exist in the folder its
    template names: CSV data picks a file there, it can't reach /etc/passwd with
    ``..``, an absolute path, ``~`` or a symbolic link pointing out. ``made_of``: the
    variables the path is made from, to name in the error."""
    spec = campaign.attachments[index]
    base = campaign.path.parent
    folder = spec.folder or base
    # A path starting with / or ~ is honoured only if the template itself starts so.
    anchored = (spec.written or spec.path).startswith(("/", "~"))
    escapes = not anchored and rendered.startswith(("/", "~"))
    try:
        path = base / (Path(rendered).expanduser() if anchored else Path(rendered))
        escapes = escapes or not path.resolve().is_relative_to(folder)
    except (OSError, RuntimeError, ValueError) as exc:  # a loop, ~nobody, a NUL byte
        raise AttachmentError(
            f"{rendered!r} is not a usable path: {exc}", where=spec.where, row=row
        ) from None
    if escapes:
        raise AttachmentError(
            f"{rendered!r} is outside {display_path(folder)}/"
            + (f" (the path is made from {', '.join(made_of)})" if made_of else "")
            + "; a per-recipient attachment must stay in the folder its path names",
            where=spec.where,
            row=row,
        )
    if not path.is_file():
        raise AttachmentError(f"{display_path(path)}: no such file", where=spec.where, row=row)
    return path


def check_filename(spec: AttachmentSpec, name: str, row: Location) -> str:
    """A per-recipient file name, which must name a file, not a path."""
    if "/" in name or "\\" in name or not name.strip("."):
        raise AttachmentError(f"{name!r} is not a file name", where=spec.where, row=row)
    return name
