"""Make the NDVI example's small sample scene: red and NIR bands, 64x64, UTM 33N."""
import json
import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds, transform_geom

rng = np.random.default_rng(42)
size = 64
transform = from_origin(500000, 4_650_000, 20, 20)  # 20 m pixels
y, x = np.mgrid[0:size, 0:size]
vegetation = ((x - 40) ** 2 + (y - 24) ** 2) < 18 ** 2  # a round field
water = x + y < 30  # a lake in a corner
red = np.where(vegetation, 600, 1800) + rng.integers(0, 150, (size, size))
nir = np.where(vegetation, 3800, 2200) + rng.integers(0, 150, (size, size))
nir = np.where(water, 300, nir)
red = np.where(water, 500, red)
profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint16",
               crs="EPSG:32633", transform=transform, compress="deflate", tiled=True,
               blockxsize=16, blockysize=16)
for name, band in (("red", red), ("nir", nir)):
    with rasterio.open(f"data/sample-{name}.tif", "w", **profile) as dst:
        dst.write(band.astype("uint16"), 1)

left, bottom, right, top = rasterio.transform.array_bounds(size, size, transform)
bbox = list(transform_bounds("EPSG:32633", "EPSG:4326", left, bottom, right, top))
bbox = [round(v, 6) for v in bbox]
geometry = {"type": "Polygon", "coordinates": [[[bbox[0], bbox[1]], [bbox[2], bbox[1]],
            [bbox[2], bbox[3]], [bbox[0], bbox[3]], [bbox[0], bbox[1]]]]}
item = {
    "type": "Feature", "stac_version": "1.1.0",
    "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json"],
    "id": "S2B_33TUG_20240704_0_L2A-sample", "collection": "sentinel-2-l2a-sample",
    "geometry": geometry, "bbox": bbox,
    "properties": {"datetime": "2024-07-04T10:10:29Z", "platform": "sentinel-2b",
                   "eo:cloud_cover": 3.2, "proj:code": "EPSG:32633"},
    "links": [{"rel": "self", "type": "application/geo+json",
               "href": "https://example.com/stac/collections/sentinel-2-l2a-sample/items/S2B_33TUG_20240704_0_L2A-sample"}],
    "assets": {
        "red": {"href": "data/sample-red.tif", "type": "image/tiff; application=geotiff",
                "title": "Red (B04)", "roles": ["data"]},
        "nir": {"href": "data/sample-nir.tif", "type": "image/tiff; application=geotiff",
                "title": "NIR (B08)", "roles": ["data"]},
    },
}
payload = {
    "type": "FeatureCollection",
    "id": "sentinel-2-l2a-sample/workflow-ndvi/S2B_33TUG_20240704_0_L2A-sample",
    "features": [item],
    "process": [{
        "workflow": "ndvi",
        "upload_options": {"path_template": "s3://example-bucket/${collection}/${year}/${id}/",
                           "public_assets": [], "s3_urls": True},
        "collection_matchers": [{"type": "catch_all", "collection_name": "sentinel-2-l2a-ndvi"}],
        "tasks": {"ndvi": {"threshold": 0.3}},
    }],
}
json.dump(payload, open("ndvi.payload.json", "w"), indent=2)
open("ndvi.payload.json", "a").write("\n")
