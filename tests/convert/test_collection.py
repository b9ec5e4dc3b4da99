"""A converted shard store describes itself as a collection of its images (bioformats2raw layout with
the OME group's ``series``): napari-ome-zarr opens the whole shard, ome-zarr-models validates the root."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import zarr

from hpa_batch.convert.validate import validate_store
from hpa_batch.core.ngff import collection_xml


def test_a_shard_store_opens_as_a_collection_of_its_images_with_their_labels(segmented):
    from napari_ome_zarr import napari_get_reader
    from ome_zarr_models.v05.bioformats2raw import BioFormats2Raw

    store = segmented["results"] / "zarr" / f"{segmented['shards'][0]}.zarr"
    root = json.loads((store / "zarr.json").read_text())["attributes"]
    images = root["hpa_batch"]["images"]
    assert images and root["ome"]["bioformats2raw.layout"] == 3
    series = json.loads((store / "OME" / "zarr.json").read_text())["attributes"]["ome"]["series"]
    assert series == images
    BioFormats2Raw.from_zarr(zarr.open_group(store, mode="r"))  # the root's layout metadata validates
    layers = napari_get_reader(str(store))(str(store))
    kinds = [(kind, meta["name"]) for _, meta, kind in layers]
    assert [k for k, _ in kinds] == ["image", "labels", "labels"] * len(images)
    for image_id, (_, channels) in zip(images, kinds[::3], strict=True):
        assert channels[0] == f"{image_id}: red (microtubules)"  # every image, channels named
    assert validate_store(store).ok  # the OME group is not taken for an image


def test_the_collection_xml_names_each_image_group():
    xml = ET.fromstring(collection_xml(["a-1", "b&2"]))
    images = [child.attrib for child in xml if child.tag.endswith("Image")]
    assert images == [{"ID": "Image:a-1", "Name": "a-1"}, {"ID": "Image:b&2", "Name": "b&2"}]
