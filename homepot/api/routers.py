"""URL routing for the API's resources."""

from rest_framework.routers import SimpleRouter


def undocumented(viewset):
    """The same viewset, left out of the OpenAPI schema (so no operation is listed twice)."""
    return type(viewset.__name__, (viewset,), {"schema": None, "__module__": viewset.__module__})


def resource_urls(resources, *, documented: bool = True) -> list:
    """URL patterns for `resources`, a list of (prefix, viewset, basename).

    Each resource answers at `/sites` (the guide's spelling, the one documented) and at
    `/sites/`. Both resolve to the view, so no redirect is involved and a POST to either
    keeps its body. Detail lookups accept any business id up to the next slash; an id that
    matches nothing gets the view's JSON 404, not the URL resolver's HTML page.
    """
    bare = SimpleRouter(trailing_slash=False)
    slashed = SimpleRouter(trailing_slash=True)
    for prefix, viewset, basename in resources:
        bare.register(prefix, viewset if documented else undocumented(viewset), basename=basename)
        slashed.register(prefix, undocumented(viewset), basename=basename)
    return bare.urls + slashed.urls
