"""Starting a job from another list: the device and site changelists' actions open the job
form with their selection as its targets, so the operator sees the pre-flight numbers and the
rollout policy before anything is sent."""

from urllib.parse import urlencode

from django.contrib import messages
from django.http import HttpResponseRedirect
from django.urls import reverse

# A selection is carried in the form's URL; beyond this, a segment of the site says it better.
MAX_PICKED = 500


def new_job_url(*, site_pks: list[int], device_pks: list[int] | None = None) -> str:
    query = {"site": site_pks[0]}
    if len(site_pks) > 1:
        query["extra_sites"] = ",".join(str(pk) for pk in site_pks[1:])
    if device_pks:
        query["target_devices"] = ",".join(str(pk) for pk in device_pks)
    return f"{reverse('admin:jobs_app_job_add')}?{urlencode(query)}"


def redirect_to_new_job(modeladmin, request, *, site_pks, device_pks=None):
    """The job form for these targets, or back to the list with why not."""
    picked = len(device_pks) if device_pks is not None else len(site_pks)
    if picked > MAX_PICKED:
        modeladmin.message_user(
            request,
            f"{picked} selected: pick at most {MAX_PICKED}, or create one job for their sites "
            "with a segment (device type, status, firmware) instead.",
            messages.ERROR,
        )
        return None
    return HttpResponseRedirect(new_job_url(site_pks=site_pks, device_pks=device_pks))


def deferral_text(delivery) -> str:
    """ "2× (sale in progress), next offer 14:05 UTC" for a delivery its device deferred;
    "forced" once the job's deferral limit made it take the work; "" otherwise."""
    if not delivery.defer_count and not delivery.forced:
        return ""
    text = f"{delivery.defer_count}×"
    if delivery.defer_reason:
        text += f" ({delivery.defer_reason})"
    if delivery.forced:
        return text + ", forced"
    if delivery.status == "pending" and delivery.next_attempt_at:
        text += f", next offer {delivery.next_attempt_at:%H:%M} UTC"
    return text
