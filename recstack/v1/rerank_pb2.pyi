from recstack.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RerankRequest(_message.Message):
    __slots__ = ("user", "candidates", "model")
    USER_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    user: _common_pb2.UserFeatures
    candidates: _common_pb2.Candidates
    model: str
    def __init__(self, user: _Optional[_Union[_common_pb2.UserFeatures, _Mapping]] = ..., candidates: _Optional[_Union[_common_pb2.Candidates, _Mapping]] = ..., model: _Optional[str] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("candidates", "model_version")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    candidates: _common_pb2.Candidates
    model_version: str
    def __init__(self, candidates: _Optional[_Union[_common_pb2.Candidates, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...
