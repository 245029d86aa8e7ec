"""bulkmail: send personalised newsletters over SMTP, checked first, sent once, resumable.

The names below are loaded on first use (PEP 562), so that ``import bulkmail`` is cheap:
the ``bulkmail`` command starts its signal handling before the heavy modules load.
"""

import importlib
import typing

if typing.TYPE_CHECKING:
    from bulkmail.deliver.transport import Transport
    from bulkmail.errors import (
        AttachmentError,
        AuthError,
        BulkmailError,
        CampaignError,
        ConfigError,
        ConnectError,
        DeliveryError,
        DeliveryUncertain,
        JournalError,
        Location,
        PreflightError,
        RecipientError,
        RecipientRefused,
        TemplateError,
        TLSError,
    )
    from bulkmail.journal.sqlite import Entry, Summary
    from bulkmail.journal.status import campaign_status, write_failed_csv
    from bulkmail.load.campaign import load_campaign
    from bulkmail.models import (
        Attachment,
        AttachmentSpec,
        Campaign,
        DkimSettings,
        Event,
        OutgoingMail,
        Rate,
        Recipient,
        Skipped,
        SmtpSettings,
        Status,
        Unsubscribe,
    )
    from bulkmail.pipeline import check_campaign, preview_campaign
    from bulkmail.reports import (
        CampaignStatus,
        CheckReport,
        Finding,
        PreviewReport,
        SendPlan,
        SendReport,
    )
    from bulkmail.send import send_campaign, send_test
    from bulkmail.starter import write_starter

__all__ = [
    "Attachment",
    "AttachmentError",
    "AttachmentSpec",
    "AuthError",
    "BulkmailError",
    "Campaign",
    "CampaignError",
    "CampaignStatus",
    "CheckReport",
    "ConfigError",
    "ConnectError",
    "DeliveryError",
    "DeliveryUncertain",
    "DkimSettings",
    "Entry",
    "Event",
    "Finding",
    "JournalError",
    "Location",
    "OutgoingMail",
    "PreflightError",
    "PreviewReport",
    "Rate",
    "Recipient",
    "RecipientError",
    "RecipientRefused",
    "SendPlan",
    "SendReport",
    "Skipped",
    "SmtpSettings",
    "Status",
    "Summary",
    "TLSError",
    "TemplateError",
    "Transport",
    "Unsubscribe",
    "campaign_status",
    "check_campaign",
    "load_campaign",
    "preview_campaign",
    "send_campaign",
    "send_test",
    "write_failed_csv",
    "write_starter",
]

# The module each exported name is defined in.
_HOMES = {
    "write_starter": "starter",
    "load_campaign": "load.campaign",
    "Campaign": "models",
    "DkimSettings": "models",
    "OutgoingMail": "models",
    "Recipient": "models",
    "Event": "models",
    "Attachment": "models",
    "AttachmentSpec": "models",
    "Rate": "models",
    "Skipped": "models",
    "SmtpSettings": "models",
    "Status": "models",
    "Unsubscribe": "models",
    "Transport": "deliver.transport",
    "Entry": "journal.sqlite",
    "Summary": "journal.sqlite",
    "CheckReport": "reports",
    "Finding": "reports",
    "PreviewReport": "reports",
    "SendPlan": "reports",
    "SendReport": "reports",
    "CampaignStatus": "reports",
    "check_campaign": "pipeline",
    "preview_campaign": "pipeline",
    "send_campaign": "send",
    "send_test": "send",
    "campaign_status": "journal.status",
    "write_failed_csv": "journal.status",
}


def __getattr__(name: str) -> typing.Any:
    if name not in __all__:
        raise AttributeError(f"module 'bulkmail' has no attribute {name!r}")
    module = importlib.import_module(f"bulkmail.{_HOMES.get(name, 'errors')}")
    value = getattr(module, name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
