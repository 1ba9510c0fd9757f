"""The five seed job types. Each module registers its type when imported."""

from shared.job_types import data_processing, email, image_processing, report_generation, webhook

__all__ = ["data_processing", "email", "image_processing", "report_generation", "webhook"]
