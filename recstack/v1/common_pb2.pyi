from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score", "propensity", "scores")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    propensity: float
    scores: _containers.ScalarMap[str, float]
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., propensity: _Optional[float] = ..., scores: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Candidates(_message.Message):
    __slots__ = ("item_ids", "scores", "components")
    class ComponentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Scores
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Scores, _Mapping]] = ...) -> None: ...
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.RepeatedScalarFieldContainer[float]
    components: _containers.MessageMap[str, Scores]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[float]] = ..., components: _Optional[_Mapping[str, Scores]] = ...) -> None: ...

class Scores(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class UserFeatures(_message.Message):
    __slots__ = ("user_id", "recent_items", "genre_scores", "counters", "last_active")
    class GenreScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    RECENT_ITEMS_FIELD_NUMBER: _ClassVar[int]
    GENRE_SCORES_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    recent_items: _containers.RepeatedScalarFieldContainer[str]
    genre_scores: _containers.ScalarMap[str, float]
    counters: _containers.ScalarMap[str, int]
    last_active: float
    def __init__(self, user_id: _Optional[str] = ..., recent_items: _Optional[_Iterable[str]] = ..., genre_scores: _Optional[_Mapping[str, float]] = ..., counters: _Optional[_Mapping[str, int]] = ..., last_active: _Optional[float] = ...) -> None: ...
