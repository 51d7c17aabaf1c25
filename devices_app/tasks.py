"""Celery tasks of the devices app. Thin: the work is in devices_app.mqtt_auth and
devices_app.services."""

from celery import shared_task

from devices_app import mqtt_auth, services


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


@shared_task(ignore_result=True, time_limit=600)
def refresh_identities() -> dict:
    """Beat, every HOMEPOT_DEVICES_IDENTITY_REFRESH_SECONDS: rewrite the Redis identities of
    the devices in use from PostgreSQL (services.device_identities_refresh). Not retried: with
    Redis away it logs and returns, and the next beat does the whole work again."""
    return services.device_identities_refresh().as_dict()
