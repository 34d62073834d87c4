from recstack.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecommendContext(_message.Message):
    __slots__ = ("attributes", "exclude_items", "force_variant", "allow_consumed")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    FORCE_VARIANT_FIELD_NUMBER: _ClassVar[int]
    ALLOW_CONSUMED_FIELD_NUMBER: _ClassVar[int]
    attributes: _containers.ScalarMap[str, str]
    exclude_items: _containers.RepeatedScalarFieldContainer[str]
    force_variant: str
    allow_consumed: bool
    def __init__(self, attributes: _Optional[_Mapping[str, str]] = ..., exclude_items: _Optional[_Iterable[str]] = ..., force_variant: _Optional[str] = ..., allow_consumed: _Optional[bool] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "context")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    context: RecommendContext
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ..., context: _Optional[_Union[RecommendContext, _Mapping]] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "request_id", "variant", "stages", "degraded", "skipped", "model_versions")
    class SkippedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ModelVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.ScoredItem]
    request_id: str
    variant: str
    stages: _containers.RepeatedScalarFieldContainer[str]
    degraded: bool
    skipped: _containers.ScalarMap[str, str]
    model_versions: _containers.ScalarMap[str, str]
    def __init__(self, items: _Optional[_Iterable[_Union[_common_pb2.ScoredItem, _Mapping]]] = ..., request_id: _Optional[str] = ..., variant: _Optional[str] = ..., stages: _Optional[_Iterable[str]] = ..., degraded: _Optional[bool] = ..., skipped: _Optional[_Mapping[str, str]] = ..., model_versions: _Optional[_Mapping[str, str]] = ...) -> None: ...
