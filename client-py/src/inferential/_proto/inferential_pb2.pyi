from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT64: _ClassVar[DType]
    BFLOAT16: _ClassVar[DType]
    UINT8: _ClassVar[DType]
    INT32: _ClassVar[DType]
    INT64: _ClassVar[DType]
    BOOL: _ClassVar[DType]
    INT8: _ClassVar[DType]
    INT16: _ClassVar[DType]
    UINT16: _ClassVar[DType]
    UINT32: _ClassVar[DType]
    UINT64: _ClassVar[DType]

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    RAW: _ClassVar[Encoding]
    JPEG: _ClassVar[Encoding]
    PNG: _ClassVar[Encoding]

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_UNSPECIFIED: _ClassVar[Status]
    OK: _ClassVar[Status]
    INVALID_REQUEST: _ClassVar[Status]
    UNKNOWN_MODEL: _ClassVar[Status]
    MODEL_ERROR: _ClassVar[Status]
    EXPIRED: _ClassVar[Status]
    QUEUE_FULL: _ClassVar[Status]
    DEADLINE_UNMEETABLE: _ClassVar[Status]
    SUPERSEDED: _ClassVar[Status]
    UNAUTHENTICATED: _ClassVar[Status]
    SHUTTING_DOWN: _ClassVar[Status]
    CANCELLED: _ClassVar[Status]
DTYPE_UNSPECIFIED: DType
FLOAT16: DType
FLOAT32: DType
FLOAT64: DType
BFLOAT16: DType
UINT8: DType
INT32: DType
INT64: DType
BOOL: DType
INT8: DType
INT16: DType
UINT16: DType
UINT32: DType
UINT64: DType
ENCODING_UNSPECIFIED: Encoding
RAW: Encoding
JPEG: Encoding
PNG: Encoding
STATUS_UNSPECIFIED: Status
OK: Status
INVALID_REQUEST: Status
UNKNOWN_MODEL: Status
MODEL_ERROR: Status
EXPIRED: Status
QUEUE_FULL: Status
DEADLINE_UNMEETABLE: Status
SUPERSEDED: Status
UNAUTHENTICATED: Status
SHUTTING_DOWN: Status
CANCELLED: Status
ITEM_SIZE_FIELD_NUMBER: _ClassVar[int]
item_size: _descriptor.FieldDescriptor
RETRYABLE_FIELD_NUMBER: _ClassVar[int]
retryable: _descriptor.FieldDescriptor

class Client(_message.Message):
    __slots__ = ("id", "type")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("key", "dtype", "shape", "byte_offset", "byte_length", "timestamp_ns", "encoding")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    BYTE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    BYTE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    key: str
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    byte_offset: int
    byte_length: int
    timestamp_ns: int
    encoding: Encoding
    def __init__(self, key: _Optional[str] = ..., dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., byte_offset: _Optional[int] = ..., byte_length: _Optional[int] = ..., timestamp_ns: _Optional[int] = ..., encoding: _Optional[_Union[Encoding, str]] = ...) -> None: ...

class Observation(_message.Message):
    __slots__ = ("client", "timestamp_ns", "urgency", "tensors", "model_id", "steps_remaining", "metadata", "priority", "request_id", "protocol_version", "latency_budget_ms", "deadline_ns", "actions_remaining", "control_rate_hz", "auth_token", "control_step")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    URGENCY_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_REMAINING_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_NS_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_REMAINING_FIELD_NUMBER: _ClassVar[int]
    CONTROL_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    AUTH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CONTROL_STEP_FIELD_NUMBER: _ClassVar[int]
    client: Client
    timestamp_ns: int
    urgency: float
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    model_id: str
    steps_remaining: int
    metadata: _containers.ScalarMap[str, str]
    priority: int
    request_id: int
    protocol_version: int
    latency_budget_ms: float
    deadline_ns: int
    actions_remaining: int
    control_rate_hz: float
    auth_token: str
    control_step: int
    def __init__(self, client: _Optional[_Union[Client, _Mapping]] = ..., timestamp_ns: _Optional[int] = ..., urgency: _Optional[float] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., model_id: _Optional[str] = ..., steps_remaining: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., priority: _Optional[int] = ..., request_id: _Optional[int] = ..., protocol_version: _Optional[int] = ..., latency_budget_ms: _Optional[float] = ..., deadline_ns: _Optional[int] = ..., actions_remaining: _Optional[int] = ..., control_rate_hz: _Optional[float] = ..., auth_token: _Optional[str] = ..., control_step: _Optional[int] = ...) -> None: ...

class ServerTiming(_message.Message):
    __slots__ = ("queue_wait_ms", "inference_ms", "total_ms", "batch_size")
    QUEUE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    queue_wait_ms: float
    inference_ms: float
    total_ms: float
    batch_size: int
    def __init__(self, queue_wait_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ModelResponse(_message.Message):
    __slots__ = ("client", "response_id", "timestamp_ns", "tensors", "inference_latency_ms", "model_id", "metadata", "request_id", "status", "error", "timing", "protocol_version", "retryable", "observation_timestamp_ns", "retry_after_ms", "first_action_step", "action_period_ms", "predicted_delay_steps", "actual_delay_steps", "valid_until_ns")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_ACTION_STEP_FIELD_NUMBER: _ClassVar[int]
    ACTION_PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_DELAY_STEPS_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_DELAY_STEPS_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_NS_FIELD_NUMBER: _ClassVar[int]
    client: Client
    response_id: str
    timestamp_ns: int
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    inference_latency_ms: float
    model_id: str
    metadata: _containers.ScalarMap[str, str]
    request_id: int
    status: Status
    error: str
    timing: ServerTiming
    protocol_version: int
    retryable: bool
    observation_timestamp_ns: int
    retry_after_ms: int
    first_action_step: int
    action_period_ms: float
    predicted_delay_steps: float
    actual_delay_steps: float
    valid_until_ns: int
    def __init__(self, client: _Optional[_Union[Client, _Mapping]] = ..., response_id: _Optional[str] = ..., timestamp_ns: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., inference_latency_ms: _Optional[float] = ..., model_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., request_id: _Optional[int] = ..., status: _Optional[_Union[Status, str]] = ..., error: _Optional[str] = ..., timing: _Optional[_Union[ServerTiming, _Mapping]] = ..., protocol_version: _Optional[int] = ..., retryable: _Optional[bool] = ..., observation_timestamp_ns: _Optional[int] = ..., retry_after_ms: _Optional[int] = ..., first_action_step: _Optional[int] = ..., action_period_ms: _Optional[float] = ..., predicted_delay_steps: _Optional[float] = ..., actual_delay_steps: _Optional[float] = ..., valid_until_ns: _Optional[int] = ...) -> None: ...
