"""Interactive runs: a form for a stage's parameters and a button per step.

Rule of this layer: a button walks the very step a batch run walks; its preview is the
step's plan itself, and Confirm applies that same plan (nothing changes before Confirm)."""
from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from . import params as params_mod


def _widget_for(name: str, value: Any, annotation):
    import ipywidgets as w

    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Literal:
        return w.Dropdown(options=list(typing.get_args(annotation)), value=value, description=name)
    if annotation is bool:
        return w.Checkbox(value=bool(value), description=name, indent=False)
    if annotation is int:
        return w.IntText(value=value, description=name)
    if annotation is float:
        return w.FloatText(value=value, description=name)
    if origin is list:
        return w.Text(value=", ".join(map(str, value or [])), description=name)
    if origin is typing.Union and args and typing.get_origin(args[0]) is typing.Literal:
        return w.Dropdown(options=list(typing.get_args(args[0])), value=value, description=name)
    return w.Text(value="" if value is None else str(value), description=name)


def _value(widget, annotation):
    v = widget.value
    if typing.get_origin(annotation) is list:
        return [x.strip() for x in v.split(",") if x.strip()]
    if isinstance(v, str) and v == "" and type(None) in typing.get_args(annotation):
        return None
    return v


class ParamsForm:
    """Widgets for some sections of the parameters, pre-filled; Apply validates
    with the same schema (and messages) as a batch run and updates the stage."""

    def __init__(self, ctx, sections: list[str]):
        import ipywidgets as w

        self.ctx, self.sections = ctx, sections
        self.fields: dict[tuple[str, ...], tuple[Any, Any]] = {}
        boxes = []
        for sec in sections:
            model = getattr(ctx.params, sec)
            rows = self._rows(model, (sec,))
            boxes.append(w.VBox([w.HTML(f"<b>{sec}</b>")] + rows))
        self.message = w.HTML()
        self.apply_button = w.Button(description="Apply", button_style="primary")
        self.apply_button.on_click(lambda _: self.apply())
        self.widget = w.VBox(boxes + [w.HBox([self.apply_button]), self.message])

    def _rows(self, model: BaseModel, path: tuple[str, ...]) -> list:
        import ipywidgets as w
        rows = []
        for name, info in type(model).model_fields.items():
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                rows.append(w.VBox([w.HTML(f"<i>{'.'.join(path + (name,))}</i>")] + self._rows(value, path + (name,))))
                continue
            wd = _widget_for(name, value, info.annotation)
            wd.tooltip = info.description or ""
            self.fields[path + (name,)] = (wd, info.annotation)
            rows.append(wd)
        return rows

    def values(self) -> dict:
        data = self.ctx.params.model_dump(mode="json")
        for path, (wd, ann) in self.fields.items():
            d = data
            for key in path[:-1]:
                d = d[key]
            d[path[-1]] = _value(wd, ann)
        return data

    def apply(self) -> bool:
        """Validate the form; on success the stage uses these parameters."""
        try:
            self.ctx.params = params_mod.Params.model_validate(self.values())
        except ValidationError as e:
            lines = [f"{params_mod.error_key(x)}: {params_mod.explain(x)}" for x in e.errors()]
            self.message.value = "<span style='color:#b00'>" + "<br>".join(lines) + "</span>"
            return False
        self.message.value = "<span style='color:#070'>parameters valid and applied</span>"
        return True


class StepButton:
    """A button for one ``helpers.steps.Step``. A click plans the step and shows the
    plan; when it changes something, Confirm applies exactly that plan. A plan with no
    change (or a read-only step) is applied on the click. In check mode nothing that
    changes is applied: the plan is all."""

    def __init__(self, ctx, step, run):
        import ipywidgets as w

        self.ctx, self.step, self.run_ = ctx, step, run
        self.calls = 0
        self.button = w.Button(description=step.label, button_style="" if step.reads_only else "warning",
                               layout=w.Layout(width="auto", min_width="148px"))
        self.confirm = w.Button(description="Confirm", button_style="danger", layout=w.Layout(display="none"))
        self.output = w.Output()
        self.button.on_click(lambda _: self.click())
        self.confirm.on_click(lambda _: self.apply())
        self.widget = w.VBox([w.HBox([self.button, self.confirm]), self.output])

    @property
    def preview(self) -> str:
        """The text of the plan shown (empty before the first click)."""
        from .ui import plan_text
        return plan_text(self.run_.plan, self.ctx.mode) if self.run_.plan is not None else ""

    def click(self) -> None:
        from .errors import RunbookError
        from .ui import show_plan
        self.confirm.layout.display = "none"
        with self.output:
            self.output.clear_output()
            try:
                self.run_.plan = self.ctx.plan(self.step)
            except RunbookError as e:
                print(f"ERROR: {e}")
                return
            show_plan(self.run_.plan, self.ctx.mode)
            plan = self.run_.plan
            if plan.unknown or (self.ctx.check and not self.step.reads_only):
                return
            if plan.changes:
                print("Press Confirm to go ahead.")
                self.confirm.layout.display = ""
                return
        self.apply()

    def apply(self) -> None:
        """Apply the plan shown (never a new one)."""
        from .errors import RunbookError
        from .ui import show_plan
        self.confirm.layout.display = "none"
        with self.output:
            self.output.clear_output()
            show_plan(self.run_.plan, self.ctx.mode)
            try:
                self.ctx.apply(self.step, self.run_)
                self.calls += 1
            except RunbookError as e:
                print(f"ERROR: {e}")
