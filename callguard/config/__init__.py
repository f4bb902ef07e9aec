"""Configuration: an Asterisk-style INI file read into frozen, validated settings."""

from callguard.config.categories import KNOWN_CATEGORIES
from callguard.config.errors import ConfigError, ConfigProblem
from callguard.config.loader import DEFAULT_CONFIG_PATH, load_config
from callguard.config.model import (
    AriConfig,
    Config,
    DefaultRate,
    GeneralConfig,
    NumberOverride,
    SmtpConfig,
    TrunkConfig,
    WebhookConfig,
)
from callguard.config.ranges import NumberRanges
from callguard.config.values import parse_duration

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "KNOWN_CATEGORIES",
    "AriConfig",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "DefaultRate",
    "GeneralConfig",
    "NumberOverride",
    "NumberRanges",
    "SmtpConfig",
    "TrunkConfig",
    "WebhookConfig",
    "load_config",
    "parse_duration",
]
