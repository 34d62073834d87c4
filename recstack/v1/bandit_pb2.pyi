from recstack.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExploreRequest(_message.Message):
    __slots__ = ("user", "candidates", "k", "policy", "explore_slots", "segment")
    USER_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    EXPLORE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    user: _common_pb2.UserFeatures
    candidates: _containers.RepeatedCompositeFieldContainer[_common_pb2.ScoredItem]
    k: int
    policy: str
    explore_slots: int
    segment: str
    def __init__(self, user: _Optional[_Union[_common_pb2.UserFeatures, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[_common_pb2.ScoredItem, _Mapping]]] = ..., k: _Optional[int] = ..., policy: _Optional[str] = ..., explore_slots: _Optional[int] = ..., segment: _Optional[str] = ...) -> None: ...

class ExploreResponse(_message.Message):
    __slots__ = ("items", "policy", "stale_state")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    STALE_STATE_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.ScoredItem]
    policy: str
    stale_state: bool
    def __init__(self, items: _Optional[_Iterable[_Union[_common_pb2.ScoredItem, _Mapping]]] = ..., policy: _Optional[str] = ..., stale_state: _Optional[bool] = ...) -> None: ...
