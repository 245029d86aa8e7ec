"""bulkmail: send personalised newsletters over SMTP, checked first, sent once, resumable."""

from bulkmail.campaign import load_campaign
from bulkmail.errors import (
    AttachmentError,
    AuthError,
    BulkmailError,
    CampaignError,
    ConfigError,
    ConnectError,
    DeliveryError,
    JournalError,
    Location,
    PreflightError,
    RecipientError,
    RecipientRefused,
    TemplateError,
    TLSError,
)
from bulkmail.models import Campaign, OutgoingMail, Recipient
from bulkmail.pipeline import CheckReport, Event, PreviewReport, check_campaign, preview_campaign
from bulkmail.send import SendPlan, SendReport, send_campaign, send_test
from bulkmail.status import CampaignStatus, campaign_status

__all__ = [
    "AttachmentError",
    "AuthError",
    "BulkmailError",
    "Campaign",
    "CampaignError",
    "CampaignStatus",
    "CheckReport",
    "ConfigError",
    "ConnectError",
    "DeliveryError",
    "Event",
    "JournalError",
    "Location",
    "OutgoingMail",
    "PreflightError",
    "PreviewReport",
    "Recipient",
    "RecipientError",
    "RecipientRefused",
    "SendPlan",
    "SendReport",
    "TLSError",
    "TemplateError",
    "campaign_status",
    "check_campaign",
    "load_campaign",
    "preview_campaign",
    "send_campaign",
    "send_test",
]
