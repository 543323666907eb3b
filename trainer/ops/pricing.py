"""What the instance costs per hour: AWS's Price List API (on-demand) or spot price history.

    >>> hourly_price("c7i.xlarge", "us-east-1")
    Price(usd_per_hour=0.1785, source='on-demand, AWS Price List API', note='')
    >>> hourly_price("c7i.xlarge", "us-east-1", spot=True, zone="us-east-1a").source
    'spot, EC2 spot price history (us-east-1a)'

When a lookup fails (no permission, no network; moto, used by the tests, has no Price List API)
a small built-in table of us-east-1 on-demand prices gives the figure, with a note saying so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from trainer.ops import aws

# USD per hour, Linux, on demand, us-east-1 (AWS price list, 2025). Other regions differ by a
# few percent; spot is typically 30 to 70 percent less.
FALLBACK = {
    "c7i.large": 0.08925, "c7i.xlarge": 0.1785, "c7i.2xlarge": 0.357, "c7i.4xlarge": 0.714,
    "m7i.large": 0.1008, "m7i.xlarge": 0.2016, "m7i.2xlarge": 0.4032,
    "c6i.large": 0.085, "c6i.xlarge": 0.17, "c6i.2xlarge": 0.34,
    "c7g.xlarge": 0.145, "c7g.2xlarge": 0.29, "t3.large": 0.0832, "t3.xlarge": 0.1664,
}
PRICING_REGION = "us-east-1"  # the Price List API answers in a few regions only


@dataclass(frozen=True)
class Price:
    usd_per_hour: float | None
    source: str
    note: str = ""


def on_demand(instance_type: str, region: str) -> float:
    """Linux, shared tenancy, no pre-installed software: the Price List API's figure."""
    filters = {"instanceType": instance_type, "regionCode": region, "operatingSystem": "Linux",
               "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}
    pricing = aws.client("pricing", PRICING_REGION, attempts=1, read_timeout=15)
    answer = pricing.get_products(
        ServiceCode="AmazonEC2", MaxResults=10,
        Filters=[{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()])
    for item in answer["PriceList"]:
        product = json.loads(item) if isinstance(item, str) else item
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dim in term["priceDimensions"].values():
                usd = float(dim["pricePerUnit"].get("USD", 0))
                if usd > 0:
                    return usd
    raise LookupError(f"no on-demand price for {instance_type} in {region}")


def spot(instance_type: str, region: str, zone: str | None = None) -> float:
    """The newest spot price of ``instance_type`` (in ``zone`` if given)."""
    ec2 = aws.client("ec2", region, attempts=2, read_timeout=15)
    kwargs = {"Filters": [{"Name": "availability-zone", "Values": [zone]}]} if zone else {}
    history = ec2.describe_spot_price_history(InstanceTypes=[instance_type],
                                              ProductDescriptions=["Linux/UNIX"], MaxResults=20,
                                              **kwargs)["SpotPriceHistory"]
    if not history:
        raise LookupError(f"no spot price for {instance_type} in {zone or region}")
    return float(max(history, key=lambda h: h["Timestamp"])["SpotPrice"])


def hourly_price(instance_type: str, region: str, spot_market: bool = False,
                 zone: str | None = None) -> Price:
    """The hourly price, from AWS when it answers, else from ``FALLBACK`` with a note."""
    try:
        if spot_market:
            return Price(spot(instance_type, region, zone),
                         f"spot, EC2 spot price history ({zone or region})")
        return Price(on_demand(instance_type, region), "on-demand, AWS Price List API")
    except Exception as e:  # any failure: the table below, and a note saying why
        reason = " ".join(str(e).split())[:120]
    usd = FALLBACK.get(instance_type)
    what = "spot price" if spot_market else "price"
    if usd is None:
        return Price(None, "unknown", f"price lookup unavailable ({reason}) and {instance_type} "
                     "is not in the built-in table")
    return Price(usd, "on-demand, built-in table (us-east-1, 2025)",
                 f"{what} lookup unavailable ({reason}); the on-demand figure is an estimate"
                 + (", spot is usually lower" if spot_market else ""))


def cost(price: Price, seconds: float | None) -> float | None:
    """Dollars for ``seconds`` at ``price`` (None if either is unknown)."""
    if price.usd_per_hour is None or seconds is None:
        return None
    return price.usd_per_hour * max(seconds, 0.0) / 3600.0
