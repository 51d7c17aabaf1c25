from django.db import models


class DeviceType(models.TextChoices):
    POS_TERMINAL = "pos_terminal", "POS terminal"
    CARD_READER = "card_reader", "Card reader"
    RECEIPT_PRINTER = "receipt_printer", "Receipt printer"
    KIOSK = "kiosk", "Kiosk"
    KITCHEN_DISPLAY = "kitchen_display", "Kitchen display"
    GATEWAY = "gateway", "Gateway"
    OTHER = "other", "Other"


class DeviceStatus(models.TextChoices):
    ONLINE = "online", "Online"
    OFFLINE = "offline", "Offline"
    MAINTENANCE = "maintenance", "Maintenance"
    ERROR = "error", "Error"
    UNKNOWN = "unknown", "Unknown"


class PushChannel(models.TextChoices):
    """How work reaches the device: it polls the agent API, or it listens on MQTT."""

    POLL = "poll", "HTTP poll"
    MQTT = "mqtt", "MQTT"
