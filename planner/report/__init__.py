"""Reports: the search's files (CSV, JSON, trace), the self-contained HTML, predicted vs measured."""

from planner.report.compare import compare
from planner.report.figures import STEP_TERMS, coalesce
from planner.report.export import ExportFormat, FrameworkConfig, export_plan
from planner.report.html import warm_assets
from planner.report.files import PLAN_COLUMNS, to_jsonable
from planner.report.write import render_report, write_search_outputs
from planner.report.moe import moe_section
from planner.report.output import check_output_dir, check_output_file, staged_dir, write_file

__all__ = [
    "ExportFormat", "FrameworkConfig", "export_plan",
    "PLAN_COLUMNS", "STEP_TERMS", "check_output_dir", "check_output_file", "coalesce", "compare", "moe_section",
    "render_report", "staged_dir", "to_jsonable", "warm_assets", "write_file", "write_search_outputs",
]
