"""Operator side of the catalog (SPEC §7): providers, offers, catalog import.

Every change invalidates the rendered plans *after* its transaction commits (the services
register it, db.after_commit); invalidating inside the transaction would let a concurrent
request re-cache the old rows.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import IntegrityError

from gpucloud.accounts.auth import require_admin
from gpucloud.bodies import BodyRoute
from gpucloud.catalog import importer, machines, service
from gpucloud.catalog.importer import CatalogDoc, ImportSummary
from gpucloud.catalog.schemas import (
    OfferCreate,
    OfferOut,
    OfferPatch,
    ProviderCreate,
    ProviderOut,
    ProviderPatch,
)
from gpucloud.errors import BadRequest, FieldError
from gpucloud.jsonresp import JSON
from gpucloud.threads import run_aside

router = APIRouter(prefix="/admin", route_class=BodyRoute, tags=["admin: catalog"],
                    dependencies=[Depends(require_admin)])


def _provider_out(s, provider_id: str) -> dict:
    found = [p for p in service.list_providers(s) if p["id"] == provider_id]
    return found[0]


@router.post("/providers", status_code=201, response_model=ProviderOut,
             operation_id="adminCreateProvider")
async def create_provider(body: ProviderCreate, request: Request):
    """A provider with machines (bare metal): each machine's inventory is read from its BMC
    first, outside the transaction, and checked against the offers it serves."""
    rt = request.app.state.rt
    # The BMCs (network, seconds each) are read aside, not on the blocking routes' threads.
    inventories = await run_aside(request.app.state, "registrations", 2,
                                  _provider_inventories, rt, body)
    out = await run_in_threadpool(_create_provider, rt, body, inventories)
    return JSON(out, status_code=201)


def _provider_inventories(rt, body: ProviderCreate) -> dict:
    service.reject_nul(body.config, ["body", "config"])
    clear = service.validated_driver_config(body.driver, body.config, ["body"])
    return machines.read_inventories(body.driver, clear, rt.clock)


def _create_provider(rt, body: ProviderCreate, inventories: dict) -> dict:
    try:
        with rt.db.write() as s:
            provider = service.create_provider(s, body.name, body.driver, body.config,
                                               body.enabled, rt.clock.now(),
                                               seal=rt.secrets.seal_text,
                                               inventories=inventories)
            return service.provider_json(provider)
    except IntegrityError:
        # Lost a race with a concurrent create of the same name.
        raise BadRequest(f"Provider {body.name} already exists") from None


@router.get("/providers", response_model=list[ProviderOut], operation_id="adminListProviders")
def list_providers(request: Request):
    rt = request.app.state.rt
    with rt.db.read() as s:
        return JSON(service.list_providers(s))


@router.patch("/providers/{provider_id}", response_model=ProviderOut,
              operation_id="adminPatchProvider")
def patch_provider(provider_id: str, body: ProviderPatch, request: Request):
    rt = request.app.state.rt
    with rt.db.write() as s:
        service.set_provider_enabled(s, provider_id, body.enabled)
        out = _provider_out(s, provider_id)
    return JSON(out)


@router.post("/offers", status_code=201, response_model=OfferOut, operation_id="adminCreateOffer")
def create_offer(body: OfferCreate, request: Request):
    rt = request.app.state.rt
    with rt.db.write() as s:
        offer = service.create_offer(s, body, rt.clock.now())
        out = service.offer_out(s, offer.id)
    return JSON(out, status_code=201)


@router.get("/offers", response_model=list[OfferOut], operation_id="adminListOffers")
def list_offers(request: Request,
                provider_id: str | None = Query(None, max_length=64,
                                                description="Only this provider's offers")):
    rt = request.app.state.rt
    with rt.db.read() as s:
        return JSON(service.list_offers(s, provider_id=provider_id))


@router.get("/offers/{offer_id}", response_model=OfferOut, operation_id="adminGetOffer")
def get_offer(offer_id: str, request: Request):
    rt = request.app.state.rt
    with rt.db.read() as s:
        return JSON(service.offer_out(s, offer_id))


@router.patch("/offers/{offer_id}", response_model=OfferOut, operation_id="adminPatchOffer")
def patch_offer(offer_id: str, body: OfferPatch, request: Request):
    rt = request.app.state.rt
    with rt.db.write() as s:
        service.patch_offer(s, offer_id, body)
        out = service.offer_out(s, offer_id)
    return JSON(out)


@router.post("/catalog", response_model=ImportSummary, operation_id="adminImportCatalog",
             summary="Apply a catalog document (idempotent upsert)")
async def import_catalog(body: CatalogDoc, request: Request):
    """Providers are matched by name, offers by provider + workload + GPU + count + vCPU +
    memory + storage + location. All-or-nothing: an invalid document writes nothing."""
    rt = request.app.state.rt
    inventories = await run_aside(request.app.state, "registrations", 2,
                                  _catalog_inventories, rt, body)
    return JSON(await run_in_threadpool(_import_catalog, rt, body, inventories))


def _catalog_inventories(rt, body: CatalogDoc) -> dict:
    inventories = {}
    for p in body.providers:  # the machines' BMCs, read before the transaction
        try:
            clear = service.validated_driver_config(p.driver, p.config, [])
        except FieldError:
            continue  # the import reports it with every other problem of the document
        inventories[p.name] = machines.read_inventories(p.driver, clear, rt.clock)
    return inventories


def _import_catalog(rt, body: CatalogDoc, inventories: dict):
    try:
        with rt.db.write() as s:
            return importer.import_catalog(s, body, rt.clock.now(), rt.secrets.seal_text,
                                           inventories=inventories)
    except IntegrityError:
        raise BadRequest("The catalog changed concurrently; apply the document again") from None
