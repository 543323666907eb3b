"""The instance's security group: no ingress at all; operators reach it through SSM, never SSH."""

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
