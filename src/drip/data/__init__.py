"""Data sets in one return shape (``LabelledData``) and stratified splits."""

from .base import LabelledData, stratified_split
from .digits import load_digits

__all__ = ["LabelledData", "load_digits", "stratified_split"]
