"""The security group with no ingress at all (operators reach the instance through SSM, never
SSH; Batch's instances are reached by no one), and the default VPC's subnets Batch launches in."""

import pulumi
import pulumi_aws as aws

from settings import Settings


def security_group(cfg: Settings) -> aws.ec2.SecurityGroup:
    return aws.ec2.SecurityGroup(
        "ave-no-ingress",
        description="AV emotion trainer: no inbound traffic; outbound to S3, ECR, CloudWatch, SSM",
        # An explicit empty list: Pulumi then removes any inbound rule added by hand.
        ingress=[],
        # Open egress: the instance has no VPC endpoints, so S3, ECR, CloudWatch Logs and the
        # SSM agent are all reached over HTTPS through the internet.
        egress=[{
            "description": "all outbound",
            "protocol": "-1",
            "from_port": 0,
            "to_port": 0,
            "cidr_blocks": ["0.0.0.0/0"],
            "ipv6_cidr_blocks": ["::/0"],
        }],
        tags=cfg.tags,
    )


def default_subnets() -> pulumi.Output[list[str]]:
    """The default VPC's default subnets, one per availability zone: where the single instance
    runs too (it names no subnet). They give instances a public address, the way out to ECS, ECR,
    S3 and CloudWatch with no NAT gateway or VPC endpoint to pay for; the security group lets
    nothing in. Every zone, so that spot can look for capacity in all of them."""
    vpc = aws.ec2.get_vpc_output(default=True)
    return aws.ec2.get_subnets_output(filters=[
        {"name": "vpc-id", "values": [vpc.id]},
        {"name": "default-for-az", "values": ["true"]},
    ]).ids
