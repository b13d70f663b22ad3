#include "weir/runtime/rendezvous.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <set>
#include <thread>

namespace weir {
namespace {

using Clock = std::chrono::steady_clock;
constexpr char kMagic[8] = {'w', 'e', 'i', 'r', 'r', 'd', 'v', '1'};
constexpr uint32_t kMaxBlob = 1u << 20;

class Socket {
 public:
  explicit Socket(int fd = -1) : fd_(fd) {}
  ~Socket() {
    if (fd_ >= 0) close(fd_);
  }
  Socket(Socket&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Socket& operator=(Socket&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

std::string Errno() { return std::strerror(errno); }

// Waits for `events` on fd until the deadline; false when it passed.
bool WaitFor(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, events, 0};
    int n = poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

Status Transfer(int fd, void* data, size_t n, bool reading, Clock::time_point deadline,
                const std::string& what) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    if (!WaitFor(fd, reading ? POLLIN : POLLOUT, deadline))
      return DeadlineExceeded(what + ": timed out");
    ssize_t got = reading ? recv(fd, p, n, 0) : send(fd, p, n, MSG_NOSIGNAL);
    if (got == 0) return Unavailable(what + ": the peer closed the connection");
    if (got < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return Unavailable(what + ": " + Errno());
    }
    p += got;
    n -= static_cast<size_t>(got);
  }
  return Status();
}

void NonBlocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK); }

std::string Seconds(double s) {
  std::string text = std::to_string(s);
  return text.substr(0, text.find('.') + 2) + " s";
}

StatusOr<std::string> Serve(const RendezvousOptions& o, const std::string& blob,
                            Clock::time_point deadline) {
  Socket listener(socket(AF_INET, SOCK_STREAM, 0));
  if (listener.fd() < 0) return Unavailable("rendezvous: socket: " + Errno());
  int yes = 1;
  setsockopt(listener.fd(), SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(static_cast<uint16_t>(o.port));
  if (bind(listener.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(listener.fd(), std::max(16, o.size)) != 0) {
    return Unavailable("rendezvous: rank 0 cannot listen on port " + std::to_string(o.port) + ": " +
                       Errno() + " (set MASTER_PORT to a free port)");
  }
  NonBlocking(listener.fd());
  std::set<int> waiting;
  for (int r = 1; r < o.size; ++r) waiting.insert(r);
  uint32_t length = htonl(static_cast<uint32_t>(blob.size()));
  while (!waiting.empty()) {
    if (!WaitFor(listener.fd(), POLLIN, deadline)) {
      std::string missing;
      for (int r : waiting) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      return DeadlineExceeded("rendezvous: rank 0 waited " + Seconds(o.timeout_s) + " on port " +
                              std::to_string(o.port) + " for rank" +
                              (waiting.size() > 1 ? "s " : " ") + missing + " of " +
                              std::to_string(o.size) + ", which never connected");
    }
    Socket peer(accept(listener.fd(), nullptr, nullptr));
    if (peer.fd() < 0) continue;
    NonBlocking(peer.fd());
    // A rank answers promptly; a stray connection must not hold the others up.
    auto soon = std::min(deadline, Clock::now() + std::chrono::seconds(5));
    char magic[sizeof(kMagic)];
    uint32_t rank = 0;
    if (!Transfer(peer.fd(), magic, sizeof(magic), true, soon, "hello").ok() ||
        std::memcmp(magic, kMagic, sizeof(kMagic)) != 0 ||
        !Transfer(peer.fd(), &rank, sizeof(rank), true, soon, "rank").ok()) {
      continue;  // not a weir rank
    }
    int r = static_cast<int>(ntohl(rank));
    if (r <= 0 || r >= o.size) continue;
    if (!waiting.count(r)) {
      return InvalidArgument("rendezvous: rank " + std::to_string(r) +
                             " connected twice: two processes of this launch claim that rank");
    }
    Status sent =
        Transfer(peer.fd(), const_cast<char*>(kMagic), sizeof(kMagic), false, soon, "reply");
    if (sent.ok()) sent = Transfer(peer.fd(), &length, sizeof(length), false, soon, "reply");
    if (sent.ok())
      sent = Transfer(peer.fd(), const_cast<char*>(blob.data()), blob.size(), false, soon, "reply");
    if (sent.ok()) waiting.erase(r);
  }
  return blob;
}

StatusOr<std::string> Fetch(const RendezvousOptions& o, Clock::time_point deadline) {
  std::string where = o.host + ":" + std::to_string(o.port);
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int e = getaddrinfo(o.host.c_str(), std::to_string(o.port).c_str(), &hints, &found); e != 0)
    return InvalidArgument("rendezvous: cannot resolve MASTER_ADDR " + o.host + ": " +
                           gai_strerror(e));
  sockaddr_in addr = *reinterpret_cast<sockaddr_in*>(found->ai_addr);
  freeaddrinfo(found);
  std::string last = "no answer";
  std::string me = "rendezvous: rank " + std::to_string(o.rank);
  while (Clock::now() < deadline) {
    Socket s(socket(AF_INET, SOCK_STREAM, 0));
    if (s.fd() < 0) return Unavailable(me + ": socket: " + Errno());
    NonBlocking(s.fd());
    int c = connect(s.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    bool connected = c == 0;
    if (!connected && errno == EINPROGRESS && WaitFor(s.fd(), POLLOUT, deadline)) {
      int error = 0;
      socklen_t len = sizeof(error);
      getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, &error, &len);
      connected = error == 0;
      if (!connected) last = std::strerror(error);
    } else if (!connected) {
      last = Errno();
    }
    if (!connected) {  // rank 0 may not listen yet
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    uint32_t rank = htonl(static_cast<uint32_t>(o.rank));
    char magic[sizeof(kMagic)];
    uint32_t length = 0;
    Status st = Transfer(s.fd(), const_cast<char*>(kMagic), sizeof(kMagic), false, deadline, me);
    if (st.ok()) st = Transfer(s.fd(), &rank, sizeof(rank), false, deadline, me);
    if (st.ok()) st = Transfer(s.fd(), magic, sizeof(magic), true, deadline, me);
    if (st.ok() && std::memcmp(magic, kMagic, sizeof(kMagic)) != 0)
      return Unavailable(me + ": " + where + " is not a weir rank 0 (wrong greeting)");
    if (st.ok()) st = Transfer(s.fd(), &length, sizeof(length), true, deadline, me);
    if (st.ok() && ntohl(length) > kMaxBlob)
      return Unavailable(me + ": rank 0 announced " + std::to_string(ntohl(length)) + " bytes");
    std::string blob(st.ok() ? ntohl(length) : 0, '\0');
    if (st.ok()) st = Transfer(s.fd(), blob.data(), blob.size(), true, deadline, me);
    if (st.ok()) return blob;
    last = st.message();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return DeadlineExceeded(me + " could not get the blob from rank 0 at " + where + " within " +
                          Seconds(o.timeout_s) + " (last: " + last + ")");
}

}  // namespace

StatusOr<std::string> ShareFromRankZero(const RendezvousOptions& options, const std::string& blob) {
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size)
    return InvalidArgument("rendezvous: rank " + std::to_string(options.rank) + " of " +
                           std::to_string(options.size) + " does not exist");
  if (options.port < 1 || options.port > 65535)
    return InvalidArgument("rendezvous: port " + std::to_string(options.port) + " is not a port");
  if (blob.size() > kMaxBlob) return InvalidArgument("rendezvous: the blob is over 1 MiB");
  auto deadline =
      Clock::now() + std::chrono::microseconds(static_cast<int64_t>(options.timeout_s * 1e6));
  if (options.size == 1) return blob;
  return options.rank == 0 ? Serve(options, blob, deadline) : Fetch(options, deadline);
}

}  // namespace weir
