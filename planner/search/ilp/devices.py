"""Device mapping ILP: logical nodes of a plan -> physical nodes, slow NICs and slow node pairs
carrying the lightest traffic (Holmes, Yang et al. 2023; Pipette, Yim et al. 2024). Shares the
solver plumbing of planner/ilp.py."""

from __future__ import annotations

from dataclasses import dataclass

import pulp

from planner.search.ilp.solver import SolveInfo, solve


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceMappingProblem:
    """Logical nodes of a plan (rank // gpus_per_node under its rank order) and their traffic.

    node_bytes[u]: bytes logical node u sends over its NICs per step (axes that cross nodes);
    edges: (u, v, bytes) point-to-point traffic between logical nodes (pipeline neighbours);
    nic_gbs[i]: NIC bandwidth of physical node i; pair_gbs: slow/fast physical node pairs.
    """

    node_bytes: tuple[float, ...]
    edges: tuple[tuple[int, int, float], ...]
    nic_gbs: tuple[float, ...]
    pair_gbs: dict[tuple[int, int], float]

    def link_gbs(self, i: int, j: int) -> float:
        default = min(self.nic_gbs[i], self.nic_gbs[j])
        return self.pair_gbs.get((i, j), self.pair_gbs.get((j, i), default))

    def evaluate(self, node_of: list[int]) -> float:
        """Slowest link time (s) of a mapping: the busiest NIC or the slowest pipeline edge."""
        nic = max(b / (self.nic_gbs[node_of[u]] * 1e9) for u, b in enumerate(self.node_bytes))
        edge = max((w / (self.link_gbs(node_of[u], node_of[v]) * 1e9) for u, v, w in self.edges), default=0.0)
        return max(nic, edge)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceMapping:
    node_of: list[int]  # logical node -> physical node
    slowest_link_s: float
    identity_s: float  # the same traffic on the identity mapping
    solve: SolveInfo


def map_devices(problem: DeviceMappingProblem, *, time_limit_s: float = 5.0) -> DeviceMapping:
    """Logical -> physical nodes minimising the slowest NIC or node-pair link (Holmes/Pipette)."""
    n = len(problem.node_bytes)
    prob = pulp.LpProblem("device_mapping", pulp.LpMinimize)
    # -- variables -- x[u][i] = 1 iff logical node u runs on physical node i; T = slowest link (s);
    # z[(u,v,i,j)] = x[u][i] * x[v][j] for pipeline edges and physical pairs with an override.
    x = [[prob.add_variable(f"x_{u}_{i}", cat=pulp.LpBinary) for i in range(n)] for u in range(n)]
    slowest = prob.add_variable("slowest_link_s", lowBound=0)
    special = [(i, j) for i in range(n) for j in range(n) if i != j and
               ((i, j) in problem.pair_gbs or (j, i) in problem.pair_gbs)]
    z = {(u, v, i, j): prob.add_variable(f"z_{u}_{v}_{i}_{j}", 0, 1)
         for u, v, _ in problem.edges for i, j in special}
    # -- objective -- min T
    prob += slowest
    # -- constraints --
    for k in range(n):  # a permutation
        prob += pulp.lpSum(x[k]) == 1, f"placed_{k}"
        prob += pulp.lpSum(x[u][k] for u in range(n)) == 1, f"hosts_{k}"
    for u, b in enumerate(problem.node_bytes):  # NIC: sum_i x[u][i] * bytes_u / nic_i <= T
        prob += pulp.lpSum(b / (problem.nic_gbs[i] * 1e9) * x[u][i] for i in range(n)) <= slowest, f"nic_{u}"
    for e, (u, v, w) in enumerate(problem.edges):
        _edge_constraint(prob, problem, x, z, slowest, e, (u, v, w), special)
    identity = list(range(n))
    for u in range(n):
        for i in range(n):
            x[u][i].setInitialValue(int(i == u))
    info = solve(prob, time_limit_s=time_limit_s)
    node_of = [next(i for i in range(n) if x[u][i].varValue > 0.5) for u in range(n)]
    return DeviceMapping(node_of=node_of, slowest_link_s=problem.evaluate(node_of),
                         identity_s=problem.evaluate(identity), solve=info)


def _edge_constraint(prob: pulp.LpProblem, p: DeviceMappingProblem, x: list, z: dict,
                     slowest: pulp.LpVariable, e: int, edge: tuple[int, int, float],
                     special: list[tuple[int, int]]) -> None:
    """Edge time w / link(i, j) with link = min(nic_i, nic_j) unless the pair has an override:
    T >= sum_i w/nic_i x[u][i] + sum_(i,j) z_uvij (w/pair_ij - w/nic_i)  (sender side) and the
    same with nic_j for the receiver; max of the two is exactly w / min(nic_i, nic_j), and both
    become w / pair_ij on an overridden pair. z = x[u][i] x[v][j] is linearised exactly."""
    u, v, w = edge
    n = len(p.nic_gbs)
    sides = {"send": [w / (p.nic_gbs[i] * 1e9) * x[u][i] for i in range(n)],
             "recv": [w / (p.nic_gbs[j] * 1e9) * x[v][j] for j in range(n)]}
    for i, j in special:
        var = z[(u, v, i, j)]
        prob += var >= x[u][i] + x[v][j] - 1, f"z_lo_{e}_{i}_{j}"
        prob += var <= x[u][i], f"z_u_{e}_{i}_{j}"
        prob += var <= x[v][j], f"z_v_{e}_{i}_{j}"
        pair_s = w / (p.link_gbs(i, j) * 1e9)
        sides["send"].append((pair_s - w / (p.nic_gbs[i] * 1e9)) * var)
        sides["recv"].append((pair_s - w / (p.nic_gbs[j] * 1e9)) * var)
    for side, terms in sides.items():
        prob += pulp.lpSum(terms) <= slowest, f"edge_{side}_{e}"
