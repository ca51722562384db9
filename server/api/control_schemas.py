"""Request and response shapes of the admin's API: SLO policies, modes, audit log."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from agft.labels import MAX_LABELS, label_problem
from server.api.schemas import UtcDatetime
from server.slo.controllers import CONTROLLERS

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
Note = Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)]
InstanceRef = Annotated[int, Field(ge=1, le=2**31 - 1)]
Controller = Literal["agft", "agft-paper", "rule", "static", "default"]
Mode = Literal["auto", "observe", "pinned", "off"]
# One list of controllers: the registry's.
assert set(get_args(Controller)) == set(CONTROLLERS), "Controller and CONTROLLERS differ"


class SloPolicyIn(BaseModel):
    """A policy as an admin writes it. Every field is checked; nothing else is accepted."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    scope: Literal["fleet", "pool", "instance"] = Field(
        description="fleet: every instance; pool: instances whose labels carry all of "
        "`selector`; instance: the one `instance_id`. The most specific scope wins."
    )
    selector: dict[str, str] = Field(
        default_factory=dict,
        description='label = value pairs a pool\'s instances all carry, e.g. {"pool": "chat"}',
    )
    instance_id: InstanceRef | None = None
    ttft_s: float = Field(gt=0, le=600, description="time-to-first-token objective, seconds")
    tpot_s: float = Field(gt=0, le=60, description="time-per-output-token objective, seconds")
    percentile: float = Field(
        default=90.0, ge=50, le=99.9, description="the percentile both objectives apply to"
    )
    max_p90_slowdown: float | None = Field(
        default=0.10,
        ge=0,
        le=10,
        description="most p90 slowdown against default clocks (0.10 = 10 %); null: only "
        "the SLO counts",
    )
    max_attainment_loss_points: float | None = Field(
        default=1.0,
        ge=0,
        le=100,
        description="most SLO attainment, in percentage points, given up against default "
        "clocks; null: no limit besides the SLO",
    )
    controller: Controller = "agft"
    controller_tunables: dict[str, float | int | None] = Field(
        default_factory=dict,
        description="agft: any AgftTunables field (docs/CONTROLLER.md); agft-paper: any "
        "PaperTunables field; rule: its thresholds (busy_fraction, ...); static: clock_mhz",
    )

    @field_validator("selector")
    @classmethod
    def _labels(cls, selector: dict[str, str]) -> dict[str, str]:
        if len(selector) > MAX_LABELS:
            raise ValueError(f"at most {MAX_LABELS} labels")
        for name, value in selector.items():
            problem = label_problem(name, value)
            if problem:
                raise ValueError(problem)
        return selector

    @model_validator(mode="after")
    def _scope_fields(self) -> Self:
        if self.scope == "pool" and not self.selector:
            raise ValueError("a pool policy needs a selector of at least one label")
        if self.scope != "pool" and self.selector:
            raise ValueError(f"a {self.scope} policy takes no selector")
        if self.scope == "instance" and self.instance_id is None:
            raise ValueError("an instance policy needs instance_id")
        if self.scope != "instance" and self.instance_id is not None:
            raise ValueError(f"a {self.scope} policy takes no instance_id")
        return self


class SloPolicyPatch(BaseModel):
    """Only the fields given change; the result is checked as a whole policy."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    scope: Literal["fleet", "pool", "instance"] | None = None
    selector: dict[str, str] | None = None
    instance_id: InstanceRef | None = None
    ttft_s: float | None = Field(default=None, gt=0, le=600)
    tpot_s: float | None = Field(default=None, gt=0, le=60)
    percentile: float | None = Field(default=None, ge=50, le=99.9)
    max_p90_slowdown: float | None = Field(default=None, ge=0, le=10)
    max_attainment_loss_points: float | None = Field(default=None, ge=0, le=100)
    controller: Controller | None = None
    controller_tunables: dict[str, float | int | None] | None = None


class SloPolicyOut(SloPolicyIn):
    model_config = ConfigDict(extra="ignore")

    id: int
    created_at: UtcDatetime
    updated_at: UtcDatetime


class SloInForce(BaseModel):
    """The policy governing an instance and why that one."""

    instance_id: int
    matched_scope: str = Field(
        description="instance, pool <labels>, fleet, or server-default (no policy matched)"
    )
    policy: SloPolicyOut | None = Field(description="null: the server's settings apply")
    ttft_s: float
    tpot_s: float
    percentile: float
    max_p90_slowdown: float | None
    max_attainment_loss_points: float | None
    controller: str
    shadowed_policy_ids: list[int] = Field(
        description="policies that also match this instance and lose to the one in force"
    )
    labels: dict[str, str]


class ModeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Mode = Field(
        description="auto: the controller; observe: decide and record, never lock a clock; "
        "pinned: hold pinned_sm_clock_mhz; off: default clocks"
    )
    pinned_sm_clock_mhz: int | None = Field(default=None, ge=1, le=10_000)
    note: Note | None = Field(default=None, description="why, for the audit log and the page")

    @model_validator(mode="after")
    def _pinned(self) -> Self:
        if self.mode == "pinned" and self.pinned_sm_clock_mhz is None:
            raise ValueError("mode pinned needs pinned_sm_clock_mhz")
        if self.mode != "pinned" and self.pinned_sm_clock_mhz is not None:
            raise ValueError("pinned_sm_clock_mhz goes with mode pinned only")
        return self


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: UtcDatetime
    actor: str
    action: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditPage(BaseModel):
    items: list[AuditOut]
    next_before_id: int | None
