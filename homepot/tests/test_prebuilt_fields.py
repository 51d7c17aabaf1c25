"""PrebuiltFieldsMixin: each serializer instance gets fields of its own, bound to it, list
and dict fields with a child of their own; validation answers as DRF builds it."""

from rest_framework import serializers

from homepot.api.serializers import PrebuiltFieldsMixin


class _Plain(serializers.Serializer):
    waves = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=100), max_length=3)
    labels = serializers.DictField(child=serializers.CharField(max_length=4), required=False)
    name = serializers.CharField(max_length=5)


class _Prebuilt(PrebuiltFieldsMixin, _Plain):
    pass


def test_each_instance_has_its_own_fields_and_children_bound_to_them():
    first, second = _Prebuilt(), _Prebuilt()
    for name in ("waves", "labels", "name"):
        assert first.fields[name] is not second.fields[name]
        assert first.fields[name].parent is first and second.fields[name].parent is second
    for name in ("waves", "labels"):
        child = first.fields[name].child
        assert child is not second.fields[name].child
        assert child.parent is first.fields[name] and child.root is first


def test_validation_answers_what_drf_answers():
    bodies = [
        {"waves": [1, 50], "labels": {"a": "b"}, "name": "ok"},
        {"waves": [0, 101, "x"], "labels": {"a": "toolong"}, "name": "toolong"},
        {"waves": [1, 2, 3, 4], "name": 7},
        {"waves": "nope", "labels": []},
    ]
    for body in bodies:
        plain, prebuilt = _Plain(data=body), _Prebuilt(data=body)
        assert plain.is_valid() == prebuilt.is_valid()
        assert plain.errors == prebuilt.errors
        assert plain.validated_data == prebuilt.validated_data
