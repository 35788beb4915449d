#include "inferential/matching.hpp"

namespace inferential {

void Matcher::track(std::uint64_t request_id, const std::string& model_id, bool awaited, std::int64_t now_ns) {
  // Ids increase, so the map's first entry is the oldest; forgetting it bounds the
  // table (a late reply to it then counts as unknown).
  while (pending_.size() >= max_pending_ && !pending_.empty()) pending_.erase(pending_.begin());
  pending_[request_id] = Pending{model_id, now_ns, awaited ? Mode::awaited : Mode::latest};
}

void Matcher::send_failed(std::uint64_t request_id) {
  pending_.erase(request_id);
  ++stats_.send_failed;
}

void Matcher::abandon(std::uint64_t request_id) {
  awaited_.erase(request_id);
  auto it = pending_.find(request_id);
  if (it != pending_.end()) it->second.mode = Mode::abandoned;
}

std::uint64_t Matcher::oldest_pending(const std::string& model_id) const {
  for (const auto& [rid, p] : pending_)
    if (p.model_id == model_id && p.mode != Mode::abandoned) return rid;
  return 0;
}

void Matcher::on_reply(Decoded d, std::int64_t now_ns) {
  ++stats_.received;
  if (!d.header_parsed) {
    ++stats_.malformed_dropped;
    return;
  }
  std::uint64_t rid = d.request_id;
  if (rid == 0) {
    if (d.protocol_version >= 2) {
      // A v2 server answers an observation it could not even parse with request id 0:
      // no request can be matched, but whoever waits now is told why instead of
      // timing out (their requests are given up; a late reply counts as stale).
      ++stats_.malformed_dropped;
      const std::string why = "the server answered a request it could not parse (" + status_name(d.status) +
                              (d.error.empty() ? "" : ": " + d.error) + ")";
      for (auto& [id, p] : pending_) {
        if (p.mode != Mode::awaited) continue;
        awaited_.insert_or_assign(id, Result<Reply>(Error{ErrorKind::protocol, d.status, false, 0, id, p.model_id, why}));
        p.mode = Mode::abandoned;
      }
      return;
    }
    rid = oldest_pending(d.model_id);  // 1.x servers echo no id but answer in order
  }
  auto it = rid ? pending_.find(rid) : pending_.end();
  if (it == pending_.end() || it->second.model_id != d.model_id) {
    ++stats_.unknown_dropped;
    return;
  }
  const Pending p = it->second;
  pending_.erase(it);

  if (!d.reply) {
    ++stats_.malformed_dropped;
    if (p.mode == Mode::awaited)
      awaited_.insert_or_assign(
          rid, Result<Reply>(Error{ErrorKind::protocol, d.status, false, 0, rid, d.model_id, d.malformed}));
    return;
  }
  Reply reply = std::move(*d.reply);
  reply.request_id = rid;
  reply.round_trip_ms = static_cast<double>(now_ns - p.sent_ns) / 1e6;
  ++stats_.by_status[reply.status];
  const bool superseded = reply.status == status::superseded;

  if (p.mode == Mode::awaited) {
    if (!superseded) advance(p.model_id, rid);
    awaited_.insert_or_assign(rid, Result<Reply>(std::move(reply)));
    return;
  }
  if (p.mode == Mode::abandoned) {
    ++stats_.stale_dropped;
    return;
  }
  if (superseded) return;  // a newer observation for this model is on its way; its reply counts
  auto newest = newest_.find(p.model_id);
  if (newest != newest_.end() && rid < newest->second) {
    ++stats_.stale_dropped;
    return;
  }
  advance(p.model_id, rid);
  latest_.insert_or_assign(p.model_id, std::move(reply));
}

void Matcher::advance(const std::string& model_id, std::uint64_t rid) {
  auto& newest = newest_[model_id];
  if (rid > newest) newest = rid;
  auto unread = latest_.find(model_id);
  if (unread != latest_.end() && unread->second.request_id < rid) {
    latest_.erase(unread);
    ++stats_.stale_dropped;
  }
}

std::optional<Reply> Matcher::take_latest(const std::string& model_id) {
  auto it = latest_.find(model_id);
  if (it == latest_.end()) return std::nullopt;
  std::optional<Reply> out(std::move(it->second));
  latest_.erase(it);
  return out;
}

std::optional<Result<Reply>> Matcher::take_awaited(std::uint64_t request_id) {
  auto it = awaited_.find(request_id);
  if (it == awaited_.end()) return std::nullopt;
  std::optional<Result<Reply>> out(std::move(it->second));
  awaited_.erase(it);
  return out;
}

}  // namespace inferential
