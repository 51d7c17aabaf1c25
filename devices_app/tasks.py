"""Celery tasks of the devices app. Thin: the work is in devices_app.mqtt_auth."""

from celery import shared_task

from devices_app import mqtt_auth


@shared_task(
    autoretry_for=(mqtt_auth.BrokerUnavailable,),
    retry_backoff=5,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=None,
    acks_late=True,
    time_limit=120,
)
def device_mqtt_login_remove(device_id: str) -> bool:
    """Remove the broker login of a device that has no usable credential (revoked, deleted),
    retrying while the broker is away. A repeat, or a device given a new credential since,
    changes nothing."""
    return mqtt_auth.device_login_remove_if_unused(device_id=device_id)
