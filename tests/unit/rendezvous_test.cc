// The TCP rendezvous NCCL's bootstrap uses without MPI (weir/runtime/rendezvous.h): rank 0's blob
// reaches every rank over loopback, whoever starts first; ranks that never come, a rank 0 that
// never listens, a stray client and two processes claiming one rank each end in a clear error.
#include "weir/runtime/rendezvous.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <thread>

namespace weir {
namespace {

// A port nobody listens on now (bound and released: a race, but a short one).
int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

RendezvousOptions Options(int port, int rank, int size, double timeout_s = 10) {
  RendezvousOptions o;
  o.port = port;
  o.rank = rank;
  o.size = size;
  o.timeout_s = timeout_s;
  return o;
}

TEST(Rendezvous, EveryRankGetsRankZerosBlob) {
  int port = FreePort();
  std::string id("nccl\0unique\xff id", 16);  // binary, with a zero byte
  std::vector<StatusOr<std::string>> got(4, StatusOr<std::string>(Internal("not run")));
  std::vector<std::thread> threads;
  // The others start first and retry until rank 0 listens.
  for (int r = 3; r >= 0; --r) {
    threads.emplace_back([&, r] {
      if (r == 0) std::this_thread::sleep_for(std::chrono::milliseconds(200));
      got[static_cast<size_t>(r)] = ShareFromRankZero(Options(port, r, 4), r == 0 ? id : "");
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 4; ++r) {
    ASSERT_TRUE(got[static_cast<size_t>(r)].ok())
        << got[static_cast<size_t>(r)].status().ToString();
    EXPECT_EQ(*got[static_cast<size_t>(r)], id) << r;
  }
}

TEST(Rendezvous, RankZeroNamesTheRanksThatNeverCame) {
  int port = FreePort();
  std::thread one([&] { ASSERT_TRUE(ShareFromRankZero(Options(port, 1, 4, 5), "").ok()); });
  auto alone = ShareFromRankZero(Options(port, 0, 4, 1.0), "id");
  one.join();
  ASSERT_FALSE(alone.ok());
  EXPECT_EQ(alone.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(alone.status().message().find("for ranks 2, 3 of 4, which never connected"),
            std::string::npos)
      << alone.status().ToString();
}

TEST(Rendezvous, ARankNamesTheAddressItCouldNotReach) {
  int port = FreePort();
  auto lost = ShareFromRankZero(Options(port, 2, 3, 0.5), "");
  ASSERT_FALSE(lost.ok());
  EXPECT_NE(lost.status().message().find("rank 2 could not get the blob from rank 0 at 127.0.0.1:" +
                                         std::to_string(port) + " within 0.5 s"),
            std::string::npos)
      << lost.status().ToString();
  EXPECT_NE(lost.status().message().find("refused"), std::string::npos) << lost.status().ToString();
}

TEST(Rendezvous, AStrayClientIsIgnored) {
  int port = FreePort();
  std::thread stray([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      const char request[] = "GET / HTTP/1.0\r\n\r\n";
      EXPECT_GT(send(fd, request, sizeof(request) - 1, 0), 0);
    }
    close(fd);
  });
  std::thread one([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    auto got = ShareFromRankZero(Options(port, 1, 2), "");
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(*got, "id");
  });
  auto zero = ShareFromRankZero(Options(port, 0, 2), "id");
  stray.join();
  one.join();
  EXPECT_TRUE(zero.ok()) << zero.status().ToString();
}

TEST(Rendezvous, TwoProcessesClaimingOneRankAreAnError) {
  int port = FreePort();
  std::vector<std::thread> twins;
  for (int i = 0; i < 2; ++i)
    twins.emplace_back([&] { (void)ShareFromRankZero(Options(port, 1, 3, 2), ""); });
  auto zero = ShareFromRankZero(Options(port, 0, 3, 2), "id");
  for (auto& t : twins) t.join();
  ASSERT_FALSE(zero.ok());
  EXPECT_NE(zero.status().message().find("rank 1 connected twice"), std::string::npos)
      << zero.status().ToString();
  EXPECT_FALSE(ShareFromRankZero(Options(port, 3, 3), "").ok());  // no rank 3 of 3
}

}  // namespace
}  // namespace weir
