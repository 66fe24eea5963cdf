"""phaselens: the silent -> decisive transition of layer-pruned LLMs, through the logit lens.

    >>> import phaselens
    >>> t = phaselens.transition_point("smollm2-135m", "capitals")
    >>> t.layer, t.ci
    >>> t.plot().show()
"""

from .lens import OptionLogits, option_logits
from .models import EMBEDDED, Model, ModelError, load_model
from .tasks import Item, LettersTemplate, Task, TaskError, builtin_tasks, load_task
from .trace import DecisionTrace, Transition, decision_trace, transition_from_trace, transition_point
from .view import ModelView, as_view

__version__ = "0.1.0"

__all__ = [
    "EMBEDDED",
    "DecisionTrace",
    "Item",
    "LettersTemplate",
    "Model",
    "ModelError",
    "ModelView",
    "OptionLogits",
    "Task",
    "TaskError",
    "Transition",
    "as_view",
    "builtin_tasks",
    "decision_trace",
    "load_model",
    "load_task",
    "option_logits",
    "transition_from_trace",
    "transition_point",
]
