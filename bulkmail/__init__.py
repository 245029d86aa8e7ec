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
        MailboxError,
        PreflightError,
        RecipientError,
        RecipientRefused,
        TemplateError,
        TLSError,
    )
    from bulkmail.feedback.inbox import read_inbox
    from bulkmail.feedback.store import StoreError, Suppression, SuppressionStore
    from bulkmail.feedback.suppressions import (
        SuppressionChange,
        add_suppressions,
        export_suppressions,
        list_suppressions,
        remove_suppressions,
        write_suppressions_csv,
    )
    from bulkmail.journal.records import Entry, SenderInfo, Summary
    from bulkmail.journal.status import campaign_status, write_failed_csv
    from bulkmail.load.campaign import load_campaign
    from bulkmail.models import (
        Attachment,
        AttachmentSpec,
        Campaign,
        DkimSettings,
        Event,
        InboxSettings,
        OutgoingMail,
        PostgresSettings,
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
        Handled,
        InboxReport,
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
    "Handled",
    "InboxReport",
    "InboxSettings",
    "JournalError",
    "Location",
    "MailboxError",
    "OutgoingMail",
    "PostgresSettings",
    "PreflightError",
    "PreviewReport",
    "Rate",
    "Recipient",
    "RecipientError",
    "RecipientRefused",
    "SendPlan",
    "SendReport",
    "SenderInfo",
    "Skipped",
    "SmtpSettings",
    "Status",
    "StoreError",
    "Summary",
    "Suppression",
    "SuppressionChange",
    "SuppressionStore",
    "TLSError",
    "TemplateError",
    "Transport",
    "Unsubscribe",
    "add_suppressions",
    "campaign_status",
    "check_campaign",
    "export_suppressions",
    "list_suppressions",
    "load_campaign",
    "preview_campaign",
    "read_inbox",
    "remove_suppressions",
    "send_campaign",
    "send_test",
    "write_failed_csv",
    "write_starter",
    "write_suppressions_csv",
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
    "Entry": "journal.records",
    "Summary": "journal.records",
    "SenderInfo": "journal.records",
    "PostgresSettings": "models",
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
    "read_inbox": "feedback.inbox",
    "StoreError": "feedback.store",
    "Suppression": "feedback.store",
    "SuppressionStore": "feedback.store",
    "SuppressionChange": "feedback.suppressions",
    "add_suppressions": "feedback.suppressions",
    "export_suppressions": "feedback.suppressions",
    "list_suppressions": "feedback.suppressions",
    "remove_suppressions": "feedback.suppressions",
    "write_suppressions_csv": "feedback.suppressions",
    "InboxSettings": "models",
    "Handled": "reports",
    "InboxReport": "reports",
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
