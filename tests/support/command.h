// Running a program the way an operator would (through the shell), with its
// exit code and what it printed, and comparing output with golden files: how
// the CLI tests drive qmgrctl.
#ifndef QMGR_TESTS_SUPPORT_COMMAND_H_
#define QMGR_TESTS_SUPPORT_COMMAND_H_

#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/support/temp_dir.h"

namespace qmgr::testing {

struct CommandResult {
  int exit_code;  // -1: killed by a signal
  std::string out;
  std::string err;
};

// `program` with `args` (shell words, unquoted as given).
inline CommandResult RunCommand(const std::string& program, const std::string& args) {
  TempDir tmp;
  const std::string command =
      absl::StrCat(program, " ", args, " >", tmp.path(), "/out 2>", tmp.path(), "/err");
  const int status = std::system(command.c_str());
  auto slurp = [](const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(tmp.path() + "/out"),
          slurp(tmp.path() + "/err")};
}

// `actual` against the golden file `dir`/`name`; with QMGR_UPDATE_GOLDEN set,
// rewrites the file instead.
inline void ExpectGolden(const std::string& dir, const std::string& name,
                         const std::string& actual) {
  const std::string path = absl::StrCat(dir, "/", name);
  if (std::getenv("QMGR_UPDATE_GOLDEN") != nullptr) {
    std::ofstream(path) << actual;
    return;
  }
  std::ifstream in(path);
  ASSERT_TRUE(in.good()) << "missing golden file " << path << " (run with QMGR_UPDATE_GOLDEN=1)";
  const std::string expected(std::istreambuf_iterator<char>(in), {});
  EXPECT_EQ(actual, expected) << "golden file " << path;
}

}  // namespace qmgr::testing

#define EXPECT_CONTAINS(text, part)                                                       \
  do {                                                                                    \
    const std::string text_ = (text);                                                     \
    EXPECT_TRUE(absl::StrContains(text_, part)) << "'" << part << "' not in:\n" << text_; \
  } while (0)

#endif  // QMGR_TESTS_SUPPORT_COMMAND_H_
