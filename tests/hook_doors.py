"""Every named call of the hook as the backend's call or flow, so that a test drives it sync or async alike.

The hook keeps named methods for what its users call (``get_job``, ``upload_file``...) and async ones for what
the triggers call; any other endpoint goes through ``hook.call`` / ``await hook.acall`` with its backend's
:class:`~airflow_provider_finetune.backends.base.Call`, and a flow through ``run_flow`` / ``await arun_flow``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.hooks.flows import ensure_flow, upload_flow
from airflow_provider_finetune.hooks.waits import listed


def _files(backend: Any) -> Any:
    backend.require("files")
    return backend


#: Each endpoint's call, made from the backend with the named method's arguments.
CALLS: dict[str, Callable[..., Any]] = {
    "create_job": lambda b, request, *, service_options=None: b.create_job(request, service_options),
    "list_jobs": lambda b, *, after=None, limit=None, metadata=None: b.list_jobs(after, limit, metadata),
    "list_job_states": lambda b, *, after=None, limit=None: b.list_job_states(after, limit),
    "get_job": lambda b, job_id: b.job_call("GET", job_id),
    "cancel_job": lambda b, job_id: b.job_call("POST", job_id, "cancel"),
    "pause_job": lambda b, job_id: b.job_call("POST", job_id, "pause"),
    "resume_job": lambda b, job_id: b.job_call("POST", job_id, "resume"),
    "list_events": lambda b, job_id, *, after=None, limit=None: b.events(job_id, after, limit),
    "list_checkpoints": lambda b, job_id, *, after=None, limit=None: b.checkpoints(job_id, after, limit),
    "list_checkpoint_permissions": lambda b, ckpt, *, project_id=None, after=None, limit=None, order=None: (
        b.permissions(ckpt, project_id, after, limit, order)
    ),
    "create_checkpoint_permissions": lambda b, ckpt, project_ids: b.grant(ckpt, project_ids),
    "delete_checkpoint_permission": lambda b, ckpt, permission_id: b.revoke(ckpt, permission_id),
    "run_grader": lambda b, grader, sample, item=None: b.run_grader(grader, sample, item),
    "validate_grader": lambda b, grader: b.validate_grader(grader),
    "chat_completion": lambda b, body: b.chat_completion(body),
    "list_files": lambda b, *, purpose=None, after=None, limit=None: _files(b).list_files(purpose, after, limit),
    "get_file": lambda b, file_id: _files(b).get_file(file_id),
    "delete_file": lambda b, file_id: _files(b).delete_file(file_id),
    "get_file_content": lambda b, file_id: _files(b).file_content(file_id),
    "create_upload": lambda b, name, size, *, purpose="fine-tune": b.create_upload(name, size, purpose),
    "add_upload_part": lambda b, upload_id, data: b.add_part(upload_id, data),
    "complete_upload": lambda b, upload_id, part_ids, *, md5=None: b.complete_upload(upload_id, part_ids, md5),
    "cancel_upload": lambda b, upload_id: b.upload_action(upload_id, "cancel"),
}
#: Each list's first call, for the iterators (``iter_jobs`` reads the pages of ``list_jobs``...).
LISTS = {
    "iter_jobs": "list_jobs",
    "iter_events": "list_events",
    "iter_checkpoints": "list_checkpoints",
    "iter_checkpoint_permissions": "list_checkpoint_permissions",
    "iter_files": "list_files",
}


def sync_call(hook: FineTuningHook, name: str, *args: Any, **kwargs: Any) -> Any:
    """The hook's sync ``name``: its method where it has one, else the endpoint through ``hook.call``."""
    if hasattr(hook, name):
        return getattr(hook, name)(*args, **kwargs)
    return hook.call(CALLS[name](hook.backend, *args, **kwargs))


async def async_call(hook: FineTuningHook, name: str, *args: Any, **kwargs: Any) -> Any:
    """The async ``name``: the hook's ``a{name}`` where it has one, else its call or flow carried out async."""
    if hasattr(hook, f"a{name}"):
        return await getattr(hook, f"a{name}")(*args, **kwargs)
    if name == "ensure_job":
        state = kwargs.pop("state", None)
        return await hook.arun_flow(ensure_flow(hook, *args, **kwargs), state=state)
    if name == "upload_file":
        return await hook.arun_flow(upload_flow(hook, *args, **kwargs))
    await hook.asettings()
    return await hook.acall(CALLS[name](hook.backend, *args, **kwargs))


async def async_items(hook: FineTuningHook, name: str, *args: Any, **kwargs: Any) -> list[Any]:
    """Every item of the async iterator ``name`` (``iter_jobs``...): the pages of its list, read async."""
    await hook.asettings()
    return await hook.arun_flow(listed(hook.backend, CALLS[LISTS[name]](hook.backend, *args, **kwargs)))
