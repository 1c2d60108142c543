# Run in every Python kernel of the code interpreter at start (ipykernel's
# exec_files). It registers two IPython formatters the SDK's Result reads:
# "e2b/data" (a DataFrame as {column: [values]}, like to_dict("list")) and "e2b/chart" (a
# matplotlib figure's chart: type, title, labels, elements), and imports
# numpy, pandas and matplotlib so that the first cell does not pay for them.
# Every name it makes is deleted at the end: the user's namespace is clean.


def __cocoon_setup():
    import re

    import IPython
    import matplotlib
    import matplotlib.pyplot  # noqa: F401 (warm import)
    import numpy  # noqa: F401 (warm import)
    import pandas
    from IPython.core.formatters import BaseFormatter
    from traitlets import ObjectName, Unicode

    def label_of(artist):
        label = artist.get_label()
        return "" if label is None or label.startswith("_") else str(label)

    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return str(v)

    def axes2d(ax, chart):
        chart["title"] = ax.get_title() or None
        for axis in ("x", "y"):
            lab = getattr(ax, "get_%slabel" % axis)() or None
            chart["%s_label" % axis] = lab
            unit = None
            if lab:
                m = re.search(r"\s\((.*?)\)|\[(.*?)\]", lab)
                if m:
                    unit = m.group(1) or m.group(2)
            chart["%s_unit" % axis] = unit
        return chart

    def ticks(ax, chart):
        chart["x_ticks"] = [num(t) for t in ax.get_xticks()]
        chart["x_tick_labels"] = [t.get_text() for t in ax.get_xticklabels()]
        chart["x_scale"] = ax.get_xscale()
        chart["y_ticks"] = [num(t) for t in ax.get_yticks()]
        chart["y_tick_labels"] = [t.get_text() for t in ax.get_yticklabels()]
        chart["y_scale"] = ax.get_yscale()
        return chart

    def kind(ax):
        from matplotlib.collections import PathCollection
        from matplotlib.lines import Line2D
        from matplotlib.patches import PathPatch, Rectangle, Wedge
        from matplotlib.text import Text

        objs = [o for o in ax.get_children() if o in ax.lines or o in ax.collections or o in ax.patches]
        objs = [o for o in objs if not isinstance(o, Text)]
        if not objs:
            return "unknown"
        if all(isinstance(o, Line2D) for o in objs):
            return "line"
        if all(isinstance(o, PathCollection) for o in objs):
            return "scatter"
        if all(isinstance(o, Wedge) for o in objs):
            return "pie"
        if all(isinstance(o, Rectangle) for o in objs):
            return "bar"
        if all(isinstance(o, (PathPatch, Line2D)) for o in objs):
            return "box_and_whisker"
        return "unknown"

    def chart_of(ax):
        t = kind(ax)
        if t == "line":
            c = ticks(ax, axes2d(ax, {"type": "line"}))
            c["elements"] = [{"label": label_of(l), "points": [[num(x), num(y)] for x, y in zip(l.get_xdata(), l.get_ydata())]} for l in ax.get_lines()]
            return c
        if t == "scatter":
            c = ticks(ax, axes2d(ax, {"type": "scatter"}))
            c["elements"] = [{"label": label_of(s), "points": [[num(x), num(y)] for x, y in s.get_offsets()]} for s in ax.collections]
            return c
        if t == "bar":
            c = axes2d(ax, {"type": "bar"})
            elements = []
            for cont in ax.containers:
                rects = list(cont)
                if not rects:
                    continue
                horizontal = len(rects) > 1 and all(r.get_height() == rects[0].get_height() for r in rects) and not all(r.get_width() == rects[0].get_width() for r in rects)
                if horizontal:
                    labels = [t.get_text() for t in ax.get_yticklabels()]
                    values = [r.get_width() for r in rects]
                    c["x_label"], c["y_label"] = c["y_label"], c["x_label"]
                    c["x_unit"], c["y_unit"] = c["y_unit"], c["x_unit"]
                else:
                    labels = [t.get_text() for t in ax.get_xticklabels()]
                    values = [r.get_height() for r in rects]
                if getattr(cont, "datavalues", None) is not None and len(labels) != len(rects):
                    labels = [str(i) for i in range(len(rects))]
                group = label_of(cont)
                for lab, v in zip(labels, values):
                    elements.append({"label": lab, "value": num(v), "group": group})
            c["elements"] = elements
            return c
        if t == "pie":
            c = {"type": "pie", "title": ax.get_title() or None}
            c["elements"] = [{"label": label_of(w), "angle": abs(round(w.theta2 - w.theta1, 4)), "radius": num(w.r)} for w in ax.patches]
            return c
        if t == "box_and_whisker":
            c = axes2d(ax, {"type": "box_and_whisker"})
            labels = [t.get_text() for t in ax.get_xticklabels()]
            elements = []
            for i, box in enumerate(ax.patches):
                v = box.get_path().vertices
                ys = v[:, 1]
                lo, hi = float(min(ys)), float(max(ys))
                xs = v[:, 0]
                x0, x1 = float(min(xs)), float(max(xs))
                el = {"label": labels[i] if i < len(labels) else str(i), "min": lo, "first_quartile": lo, "median": lo, "third_quartile": hi, "max": hi, "outliers": []}
                for l in ax.lines:
                    xd, yd = [float(a) for a in l.get_xdata()], [float(a) for a in l.get_ydata()]
                    if len(xd) == 2 and x0 - 1e-9 <= min(xd) and max(xd) <= x1 + 1e-9:
                        if yd[0] == yd[1] and lo <= yd[0] <= hi and xd[0] != xd[1] and min(xd) > x0 - 1e-9 and max(xd) < x1 + 1e-9 and (max(xd) - min(xd)) >= (x1 - x0) * 0.99:
                            el["median"] = yd[0]
                        elif yd[0] != yd[1] and max(yd) <= lo + 1e-9:
                            el["min"] = min(yd)
                        elif yd[0] != yd[1] and min(yd) >= hi - 1e-9:
                            el["max"] = max(yd)
                elements.append(el)
            c["elements"] = elements
            return c
        return {"type": "unknown", "title": ax.get_title() or None, "elements": []}

    def figure_chart(fig):
        axes = fig.get_axes()
        if not axes:
            return None
        if len(axes) == 1:
            return chart_of(axes[0])
        sup = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) else None
        return {"type": "superchart", "title": sup or None, "elements": [chart_of(ax) for ax in axes]}

    class DataFormatter(BaseFormatter):
        format_type = Unicode("e2b/data")
        print_method = ObjectName("_repr_e2b_data_")
        _return_type = (dict,)

        def __call__(self, obj):
            if isinstance(obj, pandas.DataFrame):
                try:
                    import json

                    return {str(c): json.loads(obj[c].to_json(orient="values", date_format="iso", default_handler=str)) for c in obj.columns}
                except Exception:
                    return None
            return super().__call__(obj)

    class ChartFormatter(BaseFormatter):
        format_type = Unicode("e2b/chart")
        print_method = ObjectName("_repr_e2b_chart_")
        _return_type = (dict,)

        def __call__(self, obj):
            from matplotlib.figure import Figure

            if isinstance(obj, Figure):
                try:
                    return figure_chart(obj)
                except Exception:
                    return None
            return super().__call__(obj)

    ip = IPython.get_ipython()
    f = ip.display_formatter
    f.formatters["e2b/data"] = DataFormatter(parent=f)
    f.formatters["e2b/chart"] = ChartFormatter(parent=f)
    matplotlib.rcParams["figure.dpi"] = 72


__cocoon_setup()
del __cocoon_setup
