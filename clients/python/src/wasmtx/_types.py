"""Typed views of the API's documents. Each is the JSON object itself (a `dict`, so every
field the server sends is there, including ones added after this client was written), with
properties for the fields API.md names."""

from __future__ import annotations

from typing import Any, Dict, List, Optional


class Document(dict):
    @property
    def status(self) -> str:
        """`success`, `failed`, `aborted` or `error`, as in the Kailash transaction nodes."""
        return self.get("status", "")


class Plugin(Document):
    @property
    def name(self) -> str:
        return self["name"]

    @property
    def version(self) -> Optional[int]:
        return self.get("version", self.get("latest_version"))

    @property
    def digest(self) -> Optional[str]:
        return self.get("digest")

    @property
    def exports(self) -> List[str]:
        return list(self.get("exports", []))


class PluginVersions(Document):
    @property
    def name(self) -> str:
        return self["name"]

    @property
    def versions(self) -> List[Plugin]:
        return [Plugin(v, name=self["name"]) for v in self.get("versions", [])]


class Saga(Document):
    @property
    def saga_id(self) -> str:
        return self["saga_id"]

    @property
    def state(self) -> str:
        return self.get("state", "")

    @property
    def steps(self) -> List[Dict[str, Any]]:
        return list(self.get("steps", []))


class TwoPhaseCommit(Document):
    @property
    def transaction_id(self) -> str:
        return self["transaction_id"]

    @property
    def state(self) -> str:
        return self.get("state", "")

    @property
    def decision(self) -> Optional[str]:
        return self.get("decision")

    @property
    def participants(self) -> List[Dict[str, Any]]:
        return list(self.get("participants", []))


class Transaction(Document):
    @property
    def transaction_id(self) -> str:
        return self["transaction_id"]

    @property
    def transaction_status(self) -> str:
        return self.get("transaction_status", "")

    @property
    def selected_pattern(self) -> Optional[str]:
        return self.get("selected_pattern")

    @property
    def participants(self) -> List[Dict[str, Any]]:
        return list(self.get("participants", []))


class Event(dict):
    @property
    def seq(self) -> int:
        return self["seq"]

    @property
    def kind(self) -> str:
        return self["kind"]

    @property
    def step(self) -> Optional[str]:
        return self.get("step")


class Tenant(Document):
    @property
    def tenant_id(self) -> str:
        return self["tenant_id"]

    @property
    def api_key(self) -> Optional[str]:
        return self.get("api_key")
