from recstack.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RankRequest(_message.Message):
    __slots__ = ("user", "candidates", "model", "task_weights")
    class TaskWeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    USER_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TASK_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    user: _common_pb2.UserFeatures
    candidates: _common_pb2.Candidates
    model: str
    task_weights: _containers.ScalarMap[str, float]
    def __init__(self, user: _Optional[_Union[_common_pb2.UserFeatures, _Mapping]] = ..., candidates: _Optional[_Union[_common_pb2.Candidates, _Mapping]] = ..., model: _Optional[str] = ..., task_weights: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("candidates", "model_version")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    candidates: _common_pb2.Candidates
    model_version: str
    def __init__(self, candidates: _Optional[_Union[_common_pb2.Candidates, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...
